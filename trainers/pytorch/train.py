#!/usr/bin/env python3
"""Driftline's built-in PyTorch trainer, obeying the trainer contract (README, "Bring your own trainer"):

    python3 train.py --dataset DIR --base-model FILE.onnx --hyperparameters FILE.json --output DIR

It rebuilds a classifier whose trainable part is dense (Gemm, or MatMul then Add, with ReLU
between layers, an optional Flatten first and Softmax / ArgMax at the end) from the base ONNX
model's initializers, trains it on CUDA when torch.cuda.is_available() and on the CPU otherwise,
and exports it with torch.onnx.export under the base model's input and output names with a
dynamic batch axis. A model with anything else in it fails with a clear message: use the
TypeScript trainer (which freezes a non-dense body) or your own trainer.

Needs numpy, torch and onnx (Debian: python3-torch python3-onnx). Hyperparameters: the same
keys as the TypeScript trainer (trainers/typescript/hyperparameters.ts).
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time

import numpy as np

HYPERPARAMETERS = {
    "epochs": 20,
    "batch_size": 32,
    "learning_rate": 0.005,
    "optimizer": "adam",
    "momentum": 0.9,
    "l2": 1e-4,
    "seed": 1,
    "patience": 5,
    "head_layers": None,
    "reinitialize": False,
    "embedding_batch": 512,
}


def say(**line):
    print(json.dumps(line), flush=True)


def log(message):
    say(type="log", message=str(message)[:4000])


class Unsupported(Exception):
    pass


def read_split(dataset, manifest, split):
    arrays = {}
    for name in ("x.npy", "y.npy"):
        path = os.path.join(dataset, split, name)
        with open(path, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != manifest["files"][f"{split}/{name}"]:
            raise ValueError(f"{path} does not match the sha256 in dataset.json")
        arrays[name] = np.load(path, allow_pickle=False)
    x, y = arrays["x.npy"].astype(np.float32), arrays["y.npy"].astype(np.int64)
    keep = y >= 0  # -1: unlabelled
    return x[keep].reshape(int(keep.sum()), -1), y[keep]


def dense_classifier(model):
    """The model's graph as: input name, [(W [out,in], b [out]) ...], output plan. Raises Unsupported."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise Unsupported(f"the model takes {len(inputs)} inputs; the PyTorch trainer rebuilds single-input classifiers")
    value = inputs[0]
    layers, relu_after, outputs = [], [], {}
    attrs = lambda node: {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    pending_matmul = None
    for node in graph.node:
        a = attrs(node)
        op = node.op_type
        if op == "Flatten" and node.input[0] == value and not layers:
            value = node.output[0]
        elif op == "Gemm" and node.input[0] == value:
            if a.get("transA", 0) != 0 or node.input[1] not in inits:
                raise Unsupported(f"Gemm {node.name} is not a dense layer on an initializer")
            w = inits[node.input[1]]
            w = w if a.get("transB", 0) == 1 else w.T
            b = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], np.float32)
            layers.append((a.get("alpha", 1.0) * w, a.get("beta", 1.0) * np.broadcast_to(b.reshape(-1), (w.shape[0],)).copy()))
            relu_after.append(False)
            value = node.output[0]
        elif op == "MatMul" and node.input[0] == value and node.input[1] in inits:
            pending_matmul = (node.output[0], inits[node.input[1]].T)
        elif op == "Add" and pending_matmul and pending_matmul[0] in node.input:
            other = [i for i in node.input if i != pending_matmul[0]][0]
            if other not in inits:
                raise Unsupported(f"Add {node.name} adds a computed value, not a bias")
            w = pending_matmul[1]
            layers.append((w, np.broadcast_to(inits[other].reshape(-1), (w.shape[0],)).copy()))
            relu_after.append(False)
            value, pending_matmul = node.output[0], None
        elif op == "Relu" and node.input[0] == value and layers:
            relu_after[-1] = True
            value = node.output[0]
        elif op == "Softmax" and node.input[0] == value and layers:
            outputs[node.output[0]] = ("probabilities", None)
            outputs[value] = ("logits", None)
            value = node.output[0]
        elif op == "ArgMax" and node.input[0] in outputs and a.get("keepdims", 1) == 0:
            outputs[node.output[0]] = ("label", None)
        else:
            raise Unsupported(f"{op} node {node.name or '(unnamed)'} is not part of a dense classifier")
    if not layers:
        raise Unsupported("the model has no dense layer")
    if value not in outputs:
        outputs[value] = ("logits", None)
    plan = []
    for out in graph.output:
        if out.name not in outputs:
            raise Unsupported(f"output {out.name} is not the classifier's logits, probabilities or label")
        plan.append((out.name, outputs[out.name][0]))
    return inputs[0], layers, relu_after, plan


def build_module(torch, layers, relu_after, plan):
    class DenseClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList()
            for w, b in layers:
                linear = torch.nn.Linear(w.shape[1], w.shape[0])
                with torch.no_grad():
                    linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                    linear.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))
                self.layers.append(linear)

        def logits(self, x):
            x = x.reshape(x.shape[0], -1)
            for linear, relu in zip(self.layers, relu_after):
                x = linear(x)
                if relu:
                    x = torch.relu(x)
            return x

        def forward(self, x):
            logits = self.logits(x)
            probabilities = torch.softmax(logits, dim=1)
            values = {"logits": logits, "probabilities": probabilities, "label": torch.argmax(probabilities, dim=1)}
            outs = tuple(values[kind] for _, kind in plan)
            return outs if len(outs) > 1 else outs[0]

    return DenseClassifier()


def evaluate(torch, module, x, y, device):
    if len(y) == 0:
        return 0.0, 0.0
    module.eval()
    with torch.no_grad():
        logits = module.logits(torch.from_numpy(x).to(device))
        target = torch.from_numpy(y).to(device)
        loss = torch.nn.functional.cross_entropy(logits, target).item()
        accuracy = (logits.argmax(dim=1) == target).float().mean().item()
    return loss, accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag in ("--dataset", "--base-model", "--hyperparameters", "--output"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    with open(args.hyperparameters) as f:
        given = json.load(f)
    unknown = sorted(set(given) - set(HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"HYPERPARAMETERS_INVALID: unknown hyperparameters {unknown}")
    hp = {**HYPERPARAMETERS, **given}

    import onnx
    import torch

    with open(os.path.join(args.dataset, "dataset.json")) as f:
        manifest = json.load(f)
    splits = {split: read_split(args.dataset, manifest, split) for split in ("train", "validation", "test")}
    base = onnx.load(args.base_model)
    try:
        input_name, layers, relu_after, plan = dense_classifier(base)
    except Unsupported as e:
        raise SystemExit(f"MODEL_HEAD_UNSUPPORTED: {e}; the PyTorch trainer trains classifiers made of dense layers only")
    if hp["head_layers"] is not None and hp["head_layers"] < len(layers):
        log(f"head_layers={hp['head_layers']}: the PyTorch trainer trains every dense layer; freezing the first {len(layers) - hp['head_layers']}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(hp["seed"])
    np.random.seed(hp["seed"])
    module = build_module(torch, layers, relu_after, plan).to(device)
    if hp["reinitialize"]:
        for linear in module.layers:
            linear.reset_parameters()
    trainable = list(module.layers)
    if hp["head_layers"] is not None:
        for linear in trainable[: max(0, len(trainable) - hp["head_layers"])]:
            linear.requires_grad_(False)
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for n, p in module.named_parameters() if p.requires_grad and n.endswith("weight")]
    rest = [p for n, p in module.named_parameters() if p.requires_grad and not n.endswith("weight")]
    groups = [{"params": decay, "weight_decay": hp["l2"]}, {"params": rest, "weight_decay": 0.0}]
    if hp["optimizer"] == "adam":
        optimizer = torch.optim.Adam(groups, lr=hp["learning_rate"])
    else:
        optimizer = torch.optim.SGD(groups, lr=hp["learning_rate"], momentum=hp["momentum"])
    log(f"training {len(layers)} dense layer(s) on {device.type}: {len(splits['train'][1])} training rows")
    if not params or len(splits["train"][1]) == 0:
        raise SystemExit("DATASET_INVALID: nothing to train (no labelled training rows, or no trainable layer)")

    x_train = torch.from_numpy(splits["train"][0]).to(device)
    y_train = torch.from_numpy(splits["train"][1]).to(device)
    x_val, y_val = splits["validation"]
    base_val = evaluate(torch, module, x_val, y_val, device)
    base_test = evaluate(torch, module, *splits["test"], device)
    generator = torch.Generator(device="cpu").manual_seed(hp["seed"])
    best, best_loss, best_epoch, epochs_run, seen = None, math.inf, 0, 0, 0
    started = time.perf_counter()
    for epoch in range(1, hp["epochs"] + 1):
        module.train()
        order = torch.randperm(len(y_train), generator=generator).to(device)
        total, correct = 0.0, 0
        for start in range(0, len(order), hp["batch_size"]):
            batch = order[start : start + hp["batch_size"]]
            logits = module.logits(x_train[batch])
            loss = torch.nn.functional.cross_entropy(logits, y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            correct += (logits.argmax(dim=1) == y_train[batch]).sum().item()
        seen += len(order)
        epochs_run = epoch
        train_loss = total / len(order)
        val_loss, val_accuracy = evaluate(torch, module, x_val, y_val, device)
        if not math.isfinite(train_loss) or not math.isfinite(val_loss):
            raise SystemExit(f"HYPERPARAMETERS_INVALID: training diverged at epoch {epoch}: lower the learning rate")
        metrics = {"train_accuracy": correct / len(order)}
        if len(y_val):
            metrics.update(validation_loss=val_loss, validation_accuracy=val_accuracy)
        say(type="progress", epoch=epoch, epochs=hp["epochs"], loss=train_loss, metrics=metrics)
        judged = val_loss if len(y_val) else train_loss
        if judged < best_loss:
            best_loss, best_epoch = judged, epoch
            best = {k: v.detach().clone() for k, v in module.state_dict().items()}
        elif len(y_val) and hp["patience"] > 0 and epoch - best_epoch >= hp["patience"]:
            break
    seconds = time.perf_counter() - started
    module.load_state_dict(best)

    train = evaluate(torch, module, *splits["train"], device)
    val = evaluate(torch, module, x_val, y_val, device) if len(y_val) else train
    test = evaluate(torch, module, *splits["test"], device)

    module = module.to("cpu").eval()
    in_shape = [d.dim_value if d.HasField("dim_value") else 1 for d in base.graph.input[0].type.tensor_type.shape.dim]
    dummy = torch.zeros([2] + in_shape[1:], dtype=torch.float32)
    names = [name for name, _ in plan]
    path = os.path.join(args.output, "model.onnx")
    opset = min(17, max(13, next((o.version for o in base.opset_import if o.domain in ("", "ai.onnx")), 17)))
    torch.onnx.export(
        module, dummy, path, input_names=[input_name], output_names=names,
        dynamic_axes={name: {0: "batch"} for name in [input_name] + names}, opset_version=opset,
    )
    # torch.onnx.export drops metadata; the control plane and the agent read it (classes, features, probabilities output).
    exported = onnx.load(path)
    for prop in base.metadata_props:
        exported.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(exported, path)

    result = {
        "train_loss": train[0], "train_accuracy": train[1],
        "validation_loss": val[0], "validation_accuracy": val[1],
        "test_loss": test[0], "test_accuracy": test[1],
        "base_validation_loss": base_val[0], "base_validation_accuracy": base_val[1], "base_test_accuracy": base_test[1],
        "train_rows": int(len(y_train)), "validation_rows": int(len(y_val)), "test_rows": int(len(splits["test"][1])),
        "epochs_run": epochs_run, "best_epoch": best_epoch, "trained_layers": len(params) // 2,
        "samples_per_s": seen / seconds if seconds > 0 else 0.0,
        "trainer": "driftline-pytorch", "device": device.type,
        "torch_version": torch.__version__,
    }
    with open(os.path.join(args.output, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2, allow_nan=False)
    log(f"done on {device.type}: validation accuracy {base_val[1]:.4f} -> {val[1]:.4f} after {epochs_run} epoch(s)")


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # the contract: a clear message on stderr and a non-zero exit
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)

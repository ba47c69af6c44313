/**
 * What an onnxruntime run failure says, in the model's own words: the operator and node that
 * failed and the kernel's message without the C++ source location, and whether the failure is
 * about the shape of what was fed (the caller's input) rather than the runtime itself.
 * Pure text parsing, shared by the agent's onnxruntime adapter and the CLI's golden recorder.
 */
export interface RuntimeFailure {
  /** The kernel's message, e.g. "Invalid input shape: {4,4}". */
  message: string;
  /** The operator type (Conv, Reshape) and node name, when onnxruntime named them. */
  op?: string;
  node?: string;
  /** True when the message is about input shapes: a caller can fix it by sending another shape. */
  inputShape: boolean;
}

const KERNEL_FAILURE = /^Non-zero status code returned while running (\S+) node\. Name:'([^']*)' Status Message: ([\s\S]*)$/;
/** "/onnxruntime_src/.../reshape_helper.h:84 onnxruntime::ReshapeHelper::ReshapeHelper(...) size != 0 && ... was false. " */
const SOURCE_LOCATION = /^\S+\.(?:h|cc|cpp|cu):\d+ [\s\S]*? was false\.\s*/;
/** onnxruntime's own checks of the feeds against the graph, before any kernel runs. */
const FEED_CHECK = /^(?:Invalid rank for input|Got invalid dimensions for input|Unexpected input data type|Invalid Feed Input Name|input '.*' is missing)/i;
const SHAPE_WORDS = /\b(?:shape|shapes|dimension|dimensions|dims|broadcast|rank|reshape|axis|kernel|stride|strides|pads?|size|height|width)\b/i;
/** Failures of the machine, not of the input, even when they mention a size. */
const RUNTIME_WORDS = /\b(?:alloc\w*|memory|out of memory|cuda\w*|cudnn|cublas|tensorrt|device|arena)\b/i;

export function explainRuntimeFailure(raw: string): RuntimeFailure {
  const text = raw.trim();
  const kernel = KERNEL_FAILURE.exec(text);
  if (!kernel) return { message: text, inputShape: FEED_CHECK.test(text) };
  const message = kernel[3]!.replace(SOURCE_LOCATION, '').trim() || kernel[3]!.trim();
  return { message, op: kernel[1]!, node: kernel[2]!, inputShape: SHAPE_WORDS.test(message) && !RUNTIME_WORDS.test(message) };
}

/** "Reshape node Reshape_0: The input tensor cannot be reshaped ..." */
export function describeRuntimeFailure(failure: RuntimeFailure): string {
  return failure.op ? `${failure.op} node ${failure.node || '(unnamed)'}: ${failure.message}` : failure.message;
}

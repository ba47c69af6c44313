import { isFloatType, probabilitiesOutput as chooseProbabilitiesOutput, topClasses, type OutputCandidate } from '../../common/classification.js';
import type { Clock } from '../../common/clock.js';
import { Adwin, PageHinkley, type ChangeDetector } from '../../common/drift/detectors.js';
import type { DriftReference } from '../../common/drift/reference.js';
import { SketchBuilder } from '../../common/drift/sketch.js';
import type { Logger } from '../../common/logger.js';
import type { DriftSketch } from '../../common/proto/driftline/v1/drift.js';

/** A tensor as the engine takes and returns it (only what drift needs). */
export interface ObservedTensor {
  name: string;
  /** The Open Inference Protocol datatype (FP32, INT64, ...); absent: taken for a float. */
  datatype?: string;
  shape: readonly number[];
  data: ArrayLike<unknown>;
}

export interface DriftSink {
  drift(sketch: DriftSketch): void;
  event(kind: string, message: string, attributes?: Record<string, string>): void;
}

interface Detectors {
  confidence: ChangeDetector[];
  errors: ChangeDetector[];
}

const newDetectors = (): Detectors => ({ confidence: [new PageHinkley(), new Adwin()], errors: [new PageHinkley(), new Adwin()] });
const detectorName = (d: ChangeDetector): string => (d instanceof Adwin ? 'adwin' : 'page-hinkley');

/**
 * Watches what the active model sees against the reference it shipped with: sketches of
 * each window go up as telemetry, and change detectors on the confidence and error
 * streams raise a drift event the moment they fire. A model without a reference gets
 * latency and error counts only when a reference arrives; nothing here blocks inference.
 */
export class DriftMonitor {
  private reference: DriftReference | undefined;
  private model = '';
  private version = 0;
  private window: SketchBuilder | undefined;
  private detectors: Detectors = newDetectors();

  constructor(
    private readonly sink: DriftSink,
    private readonly clock: Clock,
    private readonly logger: Logger,
  ) {}

  /** The active model changed (or its reference did): the current window is closed first. */
  setModel(model: string, version: number, reference: DriftReference | undefined): void {
    if (model === this.model && version === this.version && reference === this.reference) return;
    this.flush();
    this.model = model;
    this.version = version;
    this.reference = reference;
    this.window = undefined;
    this.detectors = newDetectors();
  }

  /** `probabilities`: the output the engine took the top class from; the reference's own choice goes first (common/classification.ts). */
  observe(
    model: string,
    version: number,
    inputs: readonly ObservedTensor[],
    outputs: readonly ObservedTensor[] | undefined,
    latencyMs: number,
    ok: boolean,
    probabilities?: string,
  ): void {
    if (!this.reference || model !== this.model || version !== this.version) return;
    const window = (this.window ??= new SketchBuilder(this.reference, model, version, this.clock.now()));
    window.observeRequest(latencyMs, ok);
    this.feed('errors', ok ? 0 : 1);
    if (!ok) return;
    const input = (this.reference.input ? inputs.find((t) => t.name === this.reference!.input) : undefined) ?? inputs[0];
    if (input && input.shape.length === 2) window.observeFeatures(input.data as ArrayLike<number>, input.shape[0]!, input.shape[1]!);
    const name = outputs ? chooseProbabilitiesOutput(outputs.map(candidate), this.reference.probabilities ?? probabilities) : undefined;
    const tensor = name === undefined ? undefined : outputs!.find((o) => o.name === name);
    if (!tensor || tensor.shape.length !== 2 || !(tensor.shape[1]! >= 1)) return;
    for (const { topClass, confidence } of topClasses(tensor.data as ArrayLike<number>, tensor.shape[0]!, tensor.shape[1]!)) {
      window.observePrediction(topClass, confidence);
      this.feed('confidence', confidence);
    }
  }

  private feed(stream: keyof Detectors, x: number): void {
    for (const detector of this.detectors[stream]) {
      if (detector.update(x)) {
        const name = detectorName(detector);
        this.logger.warn({ model: this.model, version: this.version, detector: name, stream }, 'drift alarm');
        this.sink.event('drift.alarm', `${name} detected a change in the ${stream} stream`, {
          model: this.model,
          version: String(this.version),
          detector: name,
          stream,
        });
      }
    }
  }

  /** Closes the current window: its sketch goes to the sink when it saw anything. */
  flush(): void {
    const window = this.window;
    this.window = undefined;
    if (window && !window.empty) this.sink.drift(window.finish(this.clock.now()));
  }
}

function candidate(tensor: ObservedTensor): OutputCandidate {
  return { name: tensor.name, float: tensor.datatype === undefined || isFloatType(tensor.datatype), shape: tensor.shape };
}

/**
 * One DriftMonitor per model of the set, each against its own model's reference: a model's
 * sketches and alarms carry its own name and version, and a swap of one model closes only its window.
 */
export class DriftMonitors {
  private readonly monitors = new Map<string, DriftMonitor>();

  constructor(
    private readonly sink: DriftSink,
    private readonly clock: Clock,
    private readonly logger: Logger,
  ) {}

  /** The models served now; a model no longer served has its last window closed and its monitor dropped. */
  setModels(models: ReadonlyArray<{ name: string; version: number; reference: DriftReference | undefined }>): void {
    const names = new Set(models.map((m) => m.name));
    for (const [name, monitor] of this.monitors) {
      if (names.has(name)) continue;
      monitor.flush();
      this.monitors.delete(name);
    }
    for (const m of models) {
      let monitor = this.monitors.get(m.name);
      if (!monitor) this.monitors.set(m.name, (monitor = new DriftMonitor(this.sink, this.clock, this.logger)));
      monitor.setModel(m.name, m.version, m.reference);
    }
  }

  observe(...args: Parameters<DriftMonitor['observe']>): void {
    this.monitors.get(args[0])?.observe(...args);
  }

  flush(): void {
    for (const monitor of this.monitors.values()) monitor.flush();
  }
}

import type { Clock } from '../../common/clock.js';
import { Adwin, PageHinkley, type ChangeDetector } from '../../common/drift/detectors.js';
import type { DriftReference } from '../../common/drift/reference.js';
import { SketchBuilder } from '../../common/drift/sketch.js';
import type { Logger } from '../../common/logger.js';
import type { DriftSketch } from '../../common/proto/driftline/v1/drift.js';

/** A tensor as the engine takes and returns it (only what drift needs). */
export interface ObservedTensor {
  name: string;
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

  observe(model: string, version: number, inputs: readonly ObservedTensor[], outputs: readonly ObservedTensor[] | undefined, latencyMs: number, ok: boolean): void {
    if (!this.reference || model !== this.model || version !== this.version) return;
    const window = (this.window ??= new SketchBuilder(this.reference, model, version, this.clock.now()));
    window.observeRequest(latencyMs, ok);
    this.feed('errors', ok ? 0 : 1);
    if (!ok) return;
    const input = (this.reference.input ? inputs.find((t) => t.name === this.reference!.input) : undefined) ?? inputs[0];
    if (input && input.shape.length === 2) window.observeFeatures(input.data as ArrayLike<number>, input.shape[0]!, input.shape[1]!);
    const probabilities = outputs ? pickProbabilities(outputs, this.reference.probabilities) : undefined;
    if (!probabilities) return;
    const [rows, classes] = [probabilities.shape[0]!, probabilities.shape[1]!];
    const data = probabilities.data as ArrayLike<number>;
    for (let r = 0; r < rows; r++) {
      let best = 0;
      for (let c = 1; c < classes; c++) if (data[r * classes + c]! > data[r * classes + best]!) best = c;
      const confidence = data[r * classes + best]!;
      window.observePrediction(best, confidence);
      this.feed('confidence', confidence);
    }
  }

  private feed(stream: keyof Detectors, x: number): void {
    for (const detector of this.detectors[stream]) {
      if (detector.update(x)) {
        const name = detectorName(detector);
        this.logger.warn({ model: this.model, version: this.version, detector: name, stream }, 'drift alarm');
        this.sink.event('drift.alarm', `${name} detected a change in the ${stream} stream`, { model: this.model, version: String(this.version), detector: name, stream });
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

function pickProbabilities(outputs: readonly ObservedTensor[], name: string | undefined): ObservedTensor | undefined {
  const twoD = outputs.filter((o) => o.shape.length === 2 && o.shape[1]! > 1);
  return (name ? twoD.find((o) => o.name === name) : undefined) ?? twoD.find((o) => /prob/i.test(o.name)) ?? twoD.at(-1);
}

/**
 * Byzantine-robust aggregation rules. Each must see every update of the round at once, so its
 * aggregator holds them all (holdsEveryUpdate, heldBytes say so) and the round's size is bounded
 * at task creation (create-strategy.ts). They ignore sample counts: a poisoned device would
 * otherwise buy weight by claiming samples. The server step is FedAvg's (x ← x + aggregate).
 *
 * - median: coordinate-wise median (Yin et al. 2018; Flower's FedMedian), the mean of the two
 *   middle values for an even count.
 * - trimmed-mean: per coordinate, drop ⌊β·n⌋ of the smallest and of the largest values and
 *   average the rest (Yin et al. 2018; Flower's FedTrimmedAvg).
 * - krum / multi-krum (Blanchard et al. 2017): score each update by the sum of squared distances
 *   to its n − f − 2 nearest others; Krum keeps the lowest-scored update, multi-Krum averages the
 *   m lowest-scored ones. Needs n > 2f + 2.
 */
import { DriftlineError } from '../../../common/errors.js';
import { addDelta } from './averaging.js';
import { checkUpdate } from './mean.js';
import type { ClientUpdate, RoundAggregator, ServerStrategy, StrategyState } from './strategy.js';

/** Holds the round's updates (the deltas themselves: the aggregator takes ownership, no copy). */
abstract class HoldingAggregator implements RoundAggregator {
  protected readonly updates: ClientUpdate[] = [];

  constructor(protected readonly length: number) {}

  get count(): number {
    return this.updates.length;
  }

  get heldBytes(): number {
    return this.updates.length * this.length * Float32Array.BYTES_PER_ELEMENT;
  }

  add(update: ClientUpdate): void {
    checkUpdate(update, this.length);
    this.updates.push(update);
  }

  abstract finish(): Float32Array;

  protected requireAtLeast(needed: number, rule: string): void {
    if (this.updates.length < needed) {
      throw new DriftlineError('FEDERATED_NO_QUORUM', `${rule} needs at least ${needed} updates, the round has ${this.updates.length}`);
    }
  }
}

/** Coordinate-wise: sort each coordinate's n values and reduce them. */
class CoordinateAggregator extends HoldingAggregator {
  constructor(
    length: number,
    private readonly trimFraction: number | undefined,
  ) {
    super(length);
  }

  finish(): Float32Array {
    this.requireAtLeast(1, this.trimFraction === undefined ? 'median' : 'trimmed-mean');
    const n = this.updates.length;
    const deltas = this.updates.map((u) => u.delta);
    const column = new Float64Array(n);
    const out = new Float32Array(this.length);
    const cut = this.trimFraction === undefined ? 0 : Math.floor(this.trimFraction * n);
    for (let i = 0; i < this.length; i++) {
      for (let c = 0; c < n; c++) column[c] = deltas[c]![i]!;
      column.sort();
      if (this.trimFraction === undefined) {
        const mid = n >> 1;
        out[i] = n % 2 === 1 ? column[mid]! : (column[mid - 1]! + column[mid]!) / 2;
      } else {
        let sum = 0;
        for (let c = cut; c < n - cut; c++) sum += column[c]!;
        out[i] = sum / (n - 2 * cut);
      }
    }
    return out;
  }
}

export class KrumAggregator extends HoldingAggregator {
  /** After finish: the devices whose updates were kept, best score first. */
  selectedDevices: string[] = [];

  constructor(
    length: number,
    private readonly byzantine: number,
    /** 1 for Krum; 0 for multi-Krum's default n − f. */
    private readonly selected: number,
  ) {
    super(length);
  }

  finish(): Float32Array {
    const f = this.byzantine;
    this.requireAtLeast(2 * f + 3, `krum with ${f} byzantine clients`);
    const n = this.updates.length;
    const deltas = this.updates.map((u) => u.delta);
    const distances = new Float64Array(n * n);
    for (let a = 0; a < n; a++) {
      const da = deltas[a]!;
      for (let b = a + 1; b < n; b++) {
        const db = deltas[b]!;
        let sum = 0;
        for (let i = 0; i < this.length; i++) {
          const d = da[i]! - db[i]!;
          sum += d * d;
        }
        distances[a * n + b] = sum;
        distances[b * n + a] = sum;
      }
    }
    const nearest = n - f - 2;
    const others = new Float64Array(n - 1);
    const scores = Array.from({ length: n }, (_, a) => {
      let k = 0;
      for (let b = 0; b < n; b++) if (b !== a) others[k++] = distances[a * n + b]!;
      others.sort();
      let score = 0;
      for (let j = 0; j < nearest; j++) score += others[j]!;
      return { index: a, score };
    });
    // Lowest score first; ties go to the earlier update so the result does not depend on the sort.
    scores.sort((x, y) => x.score - y.score || x.index - y.index);
    const keep = Math.min(this.selected === 0 ? n - f : this.selected, n - f);
    const chosen = scores.slice(0, keep).map((s) => s.index);
    this.selectedDevices = chosen.map((c) => this.updates[c]!.deviceId);
    const out = new Float32Array(this.length);
    for (let i = 0; i < this.length; i++) {
      let sum = 0;
      for (const c of chosen) sum += deltas[c]![i]!;
      out[i] = sum / chosen.length;
    }
    return out;
  }
}

/** FedAvg's server step over a robust aggregate. */
class RobustStrategy implements ServerStrategy {
  readonly holdsEveryUpdate = true;
  readonly proximalMu = 0;

  constructor(
    readonly name: string,
    private readonly make: (length: number) => RoundAggregator,
  ) {}

  createAggregator(length: number): RoundAggregator {
    return this.make(length);
  }

  initialState(): StrategyState {
    return {};
  }

  apply(global: Float32Array, aggregated: Float32Array, state: StrategyState): { global: Float32Array; state: StrategyState } {
    return { global: addDelta(global, aggregated, this.name), state };
  }
}

export const median = (): ServerStrategy => new RobustStrategy('median', (length) => new CoordinateAggregator(length, undefined));
export const trimmedMean = (trimFraction: number): ServerStrategy =>
  new RobustStrategy('trimmed-mean', (length) => new CoordinateAggregator(length, trimFraction));
export const krum = (byzantine: number): ServerStrategy => new RobustStrategy('krum', (length) => new KrumAggregator(length, byzantine, 1));
export const multiKrum = (byzantine: number, selected: number): ServerStrategy =>
  new RobustStrategy('multi-krum', (length) => new KrumAggregator(length, byzantine, selected));

import { desiredModelsOf } from '../../common/device-protocol/model-set.js';
import { DriftlineError } from '../../common/errors.js';
import { DesiredState, type DesiredModel } from '../../common/proto/driftline/v1/device_link.js';
import { ModelManager, readSingleModelState, type InstallState, type ModelHost, type ModelManagerOptions, type ModelRef } from './model-manager.js';

/** The agent_state key of the set's own record. */
export const SET_STATE_KEY = 'models.set';
const SLOT_KEY_PREFIX = 'models.slot.';
const MODEL_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** What the set remembers across restarts, beside one record per model (ModelManager's, under models.slot.<name>). */
interface SetRecord {
  /** The newest revision whose whole set was applied. */
  appliedRevision: number;
  /** The models of the newest desired state, in its order, with what it asked for. */
  entries: Array<{ name: string; version: number; sha256: string }>;
  /** Every model name that ever had a record (a removed model keeps its anti-rollback floor). */
  known: string[];
  /** The desired state being applied (proto JSON), so a restart finishes the models it had not reached. */
  pending?: unknown;
}

/** One model of the set as the device reports it. */
export interface SetEntry {
  name: string;
  /** The version served; 0 (and no sha256) while nothing of this model serves. */
  version: number;
  sha256: string;
  /** The version the desired state asks for. */
  desiredVersion: number;
  state: 'serving' | 'loading' | 'refused';
  /** This model's latest refusal (its running version, if any, stays). */
  error?: DriftlineError;
}

/** The engine as the set drives it: loads by name beside the others, unloads by name, says what is served. */
export interface SetHost extends ModelHost {
  unload(name: string): Promise<unknown>;
  model(name: string): { name: string; version: number; sha256: string } | undefined;
}

export interface ModelSetOptions extends Omit<ModelManagerOptions, 'host' | 'stateKey' | 'retainedFiles' | 'onChange' | 'onStep'> {
  host: SetHost;
  onChange(event: Parameters<ModelManagerOptions['onChange']>[0]): void;
  /** Test hook: called right after each state of one model's install is persisted (the kill -9 tests stop the process here). */
  onStep?: (step: InstallState | 'activated', model: string) => void;
}

/**
 * Brings the device to its desired SET of models (issue #12). Each model has its own
 * ModelManager (a slot: the whole pipeline of one model, its own persisted record, its
 * anti-rollback floor and rollback directive); this coordinator, for each new revision:
 * removes the models the desired state no longer lists (never one to make room), then applies
 * every entry, each independently (an entry identical to what is active changes nothing, so a
 * revision that changes one model reloads only that one; a refusal of one model leaves the
 * others as they were), and remembers the revision. Garbage collection in the shared models
 * folder keeps every slot's files.
 */
export class ModelSet {
  private readonly slots = new Map<string, ModelManager>();
  private record: SetRecord;
  private queue: Promise<void> = Promise.resolve();
  private latestDesired: DesiredState | undefined;
  /** When each slot last failed, so the device's last_error is the newest refusal of any model. */
  private readonly failedAt = new Map<string, number>();
  private failures = 0;
  private setError: DriftlineError | undefined;
  /**
   * While a revision applies or the set restores: what each model's load waits for (the model
   * listed before it has loaded, or is done without loading), and what to call once it loaded.
   */
  private readonly loadTurns = new Map<string, { turn: Promise<unknown>; loaded(): void }>();

  constructor(private readonly options: ModelSetOptions) {
    this.record = this.read();
    for (const name of this.record.known) this.slot(name);
  }

  get desiredRevision(): number {
    return this.record.appliedRevision;
  }

  /** The newest refusal of any model still standing (a model that activated since has none). */
  get error(): DriftlineError | undefined {
    let newest: { at: number; error: DriftlineError } | undefined;
    for (const [name, at] of this.failedAt) {
      const error = this.slots.get(name)?.error;
      if (error && (!newest || at > newest.at)) newest = { at, error };
    }
    return newest?.error ?? this.setError;
  }

  /** The slot of one model (tests read its persisted record). */
  manager(name: string): ModelManager | undefined {
    return this.slots.get(name);
  }

  /** The models of the desired state, each with what it is doing. */
  entries(): SetEntry[] {
    return this.record.entries.map((wanted) => {
      const slot = this.slots.get(wanted.name);
      const served = this.options.host.model(wanted.name);
      const error = slot?.error;
      const base = { ...(error ? { error } : {}) };
      const desiredVersion = wanted.version;
      if (served) return { name: served.name, version: served.version, sha256: served.sha256, desiredVersion, state: 'serving', ...base };
      return { name: wanted.name, version: 0, sha256: '', desiredVersion, state: slot?.busy ? 'loading' : 'refused', ...base };
    });
  }

  /**
   * After a restart: every model of the set restores (its active model loads, its interrupted
   * install resumes or is refused by the activationRetries rule), each independently; a model
   * the set had removed when the process stopped is dropped; then the desired state that was
   * being applied, if any, is applied again (the models it had already reached ignore it).
   */
  async restore(): Promise<void> {
    const wanted = this.record.entries.map((e) => e.name).filter((name) => this.slots.has(name));
    const dropped = [...this.slots].filter(([name, slot]) => !wanted.includes(name) && (slot.snapshot().active || slot.snapshot().install));
    const failed = (name: string) => (err: unknown) => this.options.logger.error({ err, model: name }, 'could not restore the model');
    await Promise.all([
      ...dropped.map(([name, slot]) => slot.remove(this.record.appliedRevision).catch(failed(name))),
      this.inSetOrder(wanted, (name) => this.slots.get(name)!.restore().catch(failed(name))),
    ]);
    if (this.record.pending !== undefined) await this.apply(DesiredState.fromJSON(this.record.pending), { resume: true });
  }

  /** Queues a desired state; replays and older revisions are ignored, newest wins. */
  apply(desired: DesiredState, { resume = false }: { resume?: boolean } = {}): Promise<void> {
    if (!resume && desired.revision <= this.record.appliedRevision) return this.queue;
    if (this.latestDesired && desired.revision <= this.latestDesired.revision) return this.queue;
    this.latestDesired = desired;
    this.queue = this.queue.then(async () => {
      if (this.latestDesired !== desired) return;
      try {
        await this.reconcile(desired);
      } finally {
        if (this.latestDesired === desired) this.latestDesired = undefined;
      }
    });
    return this.queue;
  }

  private async reconcile(desired: DesiredState): Promise<void> {
    const { accepted, refused } = validEntries(desiredModelsOf(desired));
    this.setError = refused;
    if (refused) this.options.logger.error({ code: refused.code, err: refused.message }, 'desired state entries refused');
    const names = new Set(accepted.map((m) => m.name));
    const removed = this.record.entries.filter((e) => !names.has(e.name)).map((e) => e.name);
    this.write({
      ...this.record,
      entries: accepted.map((m) => ({ name: m.name, version: m.version, sha256: m.sha256 })),
      known: [...new Set([...this.record.known, ...names])],
      pending: DesiredState.toJSON(desired),
    });
    // Only the desired state removes a model; it goes before the new ones load, so its memory is free for them.
    for (const name of removed) await this.slots.get(name)?.remove(desired.revision);
    const byName = new Map(accepted.map((entry) => [entry.name, entry]));
    await this.inSetOrder([...byName.keys()], (name) => this.slot(name).apply(perModel(desired, byName.get(name)!)));
    this.write({ ...this.record, appliedRevision: Math.max(this.record.appliedRevision, desired.revision), pending: undefined });
  }

  /**
   * Runs one task per model side by side (downloads, checks), with their loads in the set's
   * order: a model's load waits until the one listed before it has loaded or is done without
   * loading. So the memory budget gives way to the models listed first whichever download
   * finishes first, and the engine serves (and the reported state lists) them in that order.
   */
  private async inSetOrder(names: readonly string[], task: (name: string) => Promise<unknown>): Promise<void> {
    let turn: Promise<unknown> = Promise.resolve();
    const running = names.map((name) => {
      let loaded!: () => void;
      const loadedOnce = new Promise<void>((resolve) => (loaded = resolve));
      this.loadTurns.set(name, { turn, loaded });
      const done = task(name);
      turn = Promise.race([loadedOnce, done.catch(() => undefined)]);
      return done;
    });
    try {
      await Promise.all(running);
    } finally {
      for (const name of names) this.loadTurns.delete(name);
    }
  }

  private slot(name: string): ModelManager {
    let slot = this.slots.get(name);
    if (slot) return slot;
    const { onStep, host, ...options } = this.options;
    slot = new ModelManager({
      ...options,
      host: {
        load: async (model) => {
          const turn = this.loadTurns.get(name);
          await turn?.turn;
          try {
            return await host.load(model);
          } finally {
            turn?.loaded();
          }
        },
        unload: (model) => host.unload(model),
      },
      stateKey: `${SLOT_KEY_PREFIX}${name}`,
      ...(onStep ? { onStep: (step: InstallState | 'activated') => onStep(step, name) } : {}),
      retainedFiles: () => [...this.slots].filter(([other]) => other !== name).flatMap(([, s]) => s.filesInUse()),
      onChange: (event) => {
        if (event.kind === 'model.failed') this.failedAt.set(name, ++this.failures);
        this.options.onChange(event);
      },
    });
    this.slots.set(name, slot);
    return slot;
  }

  private read(): SetRecord {
    const stored = this.options.state.getState(SET_STATE_KEY);
    if (stored) return JSON.parse(stored) as SetRecord;
    // An agent that served one model: its record becomes the set's one slot, once.
    const single = readSingleModelState(this.options.state);
    // Nothing to migrate: the first desired state writes the record (an empty one written now would hide a single-model record written later by a downgraded agent).
    if (!single) return { appliedRevision: 0, entries: [], known: [] };
    const installing = single?.install ? DesiredState.fromJSON(single.install.desired).model : undefined;
    const model: ModelRef | undefined = single?.active ?? installing ?? single?.previous;
    if (!model || !MODEL_NAME.test(model.name)) {
      const fresh: SetRecord = { appliedRevision: single.appliedRevision, entries: [], known: [] };
      this.write(fresh);
      return fresh;
    }
    this.options.state.setState(`${SLOT_KEY_PREFIX}${model.name}`, JSON.stringify(single));
    const migrated: SetRecord = {
      appliedRevision: single.appliedRevision,
      entries: [{ name: model.name, version: model.version, sha256: model.sha256 }],
      known: [model.name],
    };
    this.write(migrated);
    this.options.logger.info({ model: model.name }, 'agent state of a single model migrated to a set of one');
    return migrated;
  }

  private write(next: SetRecord): void {
    this.options.state.setState(SET_STATE_KEY, JSON.stringify(next));
    this.record = next;
  }
}

/** One entry as the desired state its slot applies: the set's revision and root chain, the entry's own rollback directive. */
function perModel(desired: DesiredState, entry: DesiredModel): DesiredState {
  return DesiredState.fromPartial({ revision: desired.revision, model: entry, models: [], rootChain: desired.rootChain, rollback: entry.rollback });
}

/** Entries with a valid, unique name; the others are refused (and reported) without touching any model. */
function validEntries(models: DesiredModel[]): { accepted: DesiredModel[]; refused?: DriftlineError } {
  const seen = new Set<string>();
  const accepted: DesiredModel[] = [];
  const bad: string[] = [];
  for (const m of models) {
    if (!MODEL_NAME.test(m.name) || seen.has(m.name)) bad.push(m.name);
    else {
      seen.add(m.name);
      accepted.push(m);
    }
  }
  if (bad.length === 0) return { accepted };
  return {
    accepted,
    refused: new DriftlineError('RELEASE_INVALID', `desired models ${bad.map((n) => JSON.stringify(n)).join(', ')} have an invalid or repeated name`, {
      details: { names: bad },
    }),
  };
}

import { parseReference, type DriftReference } from '../../common/drift/reference.js';
import type { Logger } from '../../common/logger.js';
import type { AgentStateStore } from '../buffer/ports.js';

/**
 * The drift reference of each model version the control plane sent, kept in the agent's
 * state so a restart or a rollback finds it again, and parsed once per distinct document.
 */
export class DriftReferences {
  private readonly parsed = new Map<string, DriftReference | undefined>();

  constructor(
    private readonly state: AgentStateStore,
    private readonly logger: Logger,
  ) {}

  remember(model: string, version: number, json: string): void {
    this.state.setState(key(model, version), json);
  }

  /** The version's reference; undefined when none was sent, or it is invalid (said once, in the log). */
  forModel(model: string, version: number): DriftReference | undefined {
    const json = this.state.getState(key(model, version));
    if (json === undefined) return undefined;
    if (!this.parsed.has(json)) {
      try {
        this.parsed.set(json, parseReference(json));
      } catch (err) {
        this.logger.warn({ err }, "the model's drift reference is invalid; drift sketches are off for it");
        this.parsed.set(json, undefined);
      }
    }
    return this.parsed.get(json);
  }
}

const key = (model: string, version: number): string => `drift.reference:${model}@${version}`;

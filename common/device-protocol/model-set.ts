import type { ActiveModel, DesiredModel, DesiredState, ReportedState } from '../proto/driftline/v1/device_link.js';

/**
 * A device serves a set of models (issue #12). The wire keeps the single-model fields of
 * before filled beside the sets (see proto/driftline/v1/device_link.proto), and these two
 * functions are the one place that reads either shape: the agent, the simulator and the
 * control plane never look at `model` / `active_model` themselves.
 */

/** The models a desired state asks for, by name, each with its own rollback directive. */
export function desiredModelsOf(desired: DesiredState | undefined): DesiredModel[] {
  if (!desired) return [];
  if (desired.models.length > 0) return desired.models;
  // A control plane from before the sets: one model, the rollback directive beside it.
  return desired.model ? [{ ...desired.model, rollback: desired.model.rollback.length > 0 ? desired.model.rollback : desired.rollback }] : [];
}

/** The models a device reports, by name. */
export function activeModelsOf(reported: ReportedState | undefined): ActiveModel[] {
  if (!reported) return [];
  if (reported.activeModels.length > 0) return reported.activeModels;
  // An agent from before the sets reports the one model it serves.
  return reported.activeModel ? [{ ...reported.activeModel, state: reported.activeModel.state || 'serving' }] : [];
}

/** A desired state for `models`, with the fields agents from before read filled from the first entry. */
export function desiredStateOf(fields: { revision: number; models: readonly DesiredModel[]; rootChain: readonly Buffer[] }): DesiredState {
  const first = fields.models[0];
  return {
    revision: fields.revision,
    models: [...fields.models],
    model: first,
    rootChain: [...fields.rootChain],
    rollback: first?.rollback ?? Buffer.alloc(0),
  };
}

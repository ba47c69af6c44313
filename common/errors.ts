/**
 * Every error Driftline raises carries a stable code from this registry. Tests assert
 * codes, never messages; adapters (gRPC, HTTP, MQTT) map the code's kind to their own
 * status in exactly one place each.
 */
export type ErrorKind =
  | 'invalid' // the caller sent something malformed or out of range
  | 'unauthenticated'
  | 'forbidden'
  | 'not_found'
  | 'conflict' // already exists, already used, wrong state
  | 'exhausted' // overloaded, quota, too large
  | 'unavailable' // try again later
  | 'deadline'
  | 'internal';

export const ERROR_CODES = {
  CONFIG_INVALID: 'invalid',
  PROFILE_INVALID: 'invalid',
  ID_INVALID: 'invalid',
  REQUEST_INVALID: 'invalid',
  PAYLOAD_MALFORMED: 'invalid',
  PAYLOAD_TOO_LARGE: 'exhausted',
  /** A repeated field (a batch's records, a state's warnings, a result's outputs) holds more entries than allowed. */
  PAYLOAD_TOO_MANY_ENTRIES: 'exhausted',
  /** A device sent messages faster than its rate limit (ingest.deviceRate); refused before decoding. */
  DEVICE_RATE_LIMITED: 'exhausted',
  AUTH_MISSING: 'unauthenticated',
  AUTH_INVALID: 'unauthenticated',
  ROLE_INSUFFICIENT: 'forbidden',
  ENROLLMENT_TOKEN_INVALID: 'unauthenticated',
  ENROLLMENT_TOKEN_USED: 'unauthenticated',
  ENROLLMENT_TOKEN_EXPIRED: 'unauthenticated',
  ENROLLMENT_TOKEN_REVOKED: 'unauthenticated',
  DEVICE_NOT_FOUND: 'not_found',
  DEVICE_DECOMMISSIONED: 'forbidden',
  DEVICE_ALREADY_ENROLLED: 'conflict',
  TOPIC_FORBIDDEN: 'forbidden',
  MODEL_NOT_FOUND: 'not_found',
  MODEL_INVALID: 'invalid',
  /** A dataset snapshot (its manifest, an .npy array, a file's hash) is not what the driftline-dataset format says. */
  DATASET_INVALID: 'invalid',
  DATASET_NOT_FOUND: 'not_found',
  /** A snapshot would hold more rows than datasets.maxRows; refused before it is built. */
  DATASET_TOO_LARGE: 'exhausted',
  /** No captured sample matches the query (model, version, selector, since, labelled only). */
  DATASET_EMPTY: 'conflict',
  /** The model is marked "no raw capture": its samples never leave the devices, only federated learning trains it. */
  DATASET_RAW_CAPTURE_OFF: 'forbidden',
  /** Replay asked for the parent version's training snapshot, and its lineage names none that is kept. */
  DATASET_PARENT_NOT_FOUND: 'not_found',
  /** A captured sample's tensor is larger than samples.maxTensorBytes: refused at ingest and counted (the batch is acknowledged). */
  SAMPLE_TOO_LARGE: 'exhausted',
  /** A captured sample that cannot be a dataset row (no FP32 input, a shape that does not match its bytes): refused and counted. */
  SAMPLE_INVALID: 'invalid',
  /** A sample of a model marked "no raw capture": refused at ingest and counted. */
  SAMPLE_RAW_CAPTURE_OFF: 'forbidden',
  MODEL_NOT_LOADED: 'unavailable',
  MODEL_CHECKSUM_MISMATCH: 'invalid',
  /** An amendment (or a push of bytes a version already has) that would change nothing, or whose changes would be dropped. */
  MODEL_UNCHANGED: 'conflict',
  /** An undeploy of a model that no target device has in its desired set. */
  MODEL_NOT_DEPLOYED: 'not_found',
  /** The model loaded but its warm-up inference failed (example inputs, or every size tried). */
  MODEL_WARMUP_FAILED: 'invalid',
  /** A model of a device's set does not fit the firmware profile's memory budget beside the models serving (measured after its load); they stay. */
  MODEL_SET_OVER_BUDGET: 'exhausted',
  ARTIFACT_NOT_FOUND: 'not_found',
  ARTIFACT_FORBIDDEN: 'forbidden',
  UPLOAD_INCOMPLETE: 'invalid',
  INFERENCE_INPUT_INVALID: 'invalid',
  /** The input fits the model's signature, but the model cannot take that shape (too small for its strides, a zero dimension, batch sizes that differ). */
  INPUT_SHAPE_INVALID: 'invalid',
  INFERENCE_FAILED: 'internal',
  INFERENCE_OVERLOADED: 'exhausted',
  INFERENCE_TIMEOUT: 'deadline',
  /** The runtime's inference thread died with the request in flight; the model loads again on the next request (retry). */
  INFERENCE_RUNTIME_CRASHED: 'unavailable',
  PROVIDER_UNAVAILABLE: 'unavailable',
  BUFFER_FULL: 'exhausted',
  STORE_FAILED: 'internal',
  UPLINK_UNAVAILABLE: 'unavailable',
  DOWNLOAD_FAILED: 'unavailable',
  SHUTTING_DOWN: 'unavailable',
  /** A component did not drain within its shutdown grace and was forced (what it had in flight was cut, or stays for the next start). */
  SHUTDOWN_GRACE_EXPIRED: 'deadline',
  NOT_IMPLEMENTED: 'internal',
  INTERNAL: 'internal',
  TOKEN_NOT_FOUND: 'not_found',
  INFERENCE_CANCELLED: 'unavailable',
  ROUTE_NOT_FOUND: 'not_found',
  FEEDBACK_UNKNOWN_ID: 'not_found',
  FEEDBACK_DUPLICATE: 'conflict',
  LISTEN_FAILED: 'unavailable',
  ROLLOUT_NOT_FOUND: 'not_found',
  ROLLOUT_ACTIVE_EXISTS: 'conflict',
  ROLLOUT_STATE_INVALID: 'conflict',
  ROLLOUT_NO_TARGETS: 'invalid',
  ROLLOUT_MIN_DEVICES_UNMET: 'invalid',
  REQUEST_ID_REUSED: 'conflict',
  /** No training job has this id. */
  TRAINING_JOB_NOT_FOUND: 'not_found',
  /** A training job command or worker call that makes no sense in the job's state (cancel an ended job, complete one that is not running). */
  TRAINING_STATE_INVALID: 'conflict',
  /** The worker's lease expired or the attempt went to another worker: stop the trainer, upload nothing. */
  TRAINING_LEASE_LOST: 'conflict',
  /** Every attempt of a training job failed or lost its lease (the job's error code). */
  TRAINING_ATTEMPTS_EXHAUSTED: 'exhausted',
  /** The evaluation gate could not judge a candidate (the evaluator failed; the job's error code). */
  TRAINING_EVALUATION_FAILED: 'internal',
  /** A candidate passed the gate but the candidate sink could not register it as a version (the job's error code). */
  TRAINING_REGISTRATION_FAILED: 'internal',
  /** A worker id that was never registered (register again). */
  TRAINING_WORKER_NOT_FOUND: 'not_found',
  /** A candidate id this lease did not upload. */
  TRAINING_CANDIDATE_NOT_FOUND: 'not_found',
  TRUST_SIGNATURE_INVALID: 'forbidden',
  TRUST_KEY_UNKNOWN: 'forbidden',
  TRUST_KEY_REVOKED: 'forbidden',
  TRUST_THRESHOLD_NOT_MET: 'forbidden',
  TRUST_METADATA_EXPIRED: 'forbidden',
  TRUST_ROOT_INVALID: 'invalid',
  TRUST_NOT_CONFIGURED: 'invalid',
  KEY_PASSPHRASE_INVALID: 'unauthenticated',
  RELEASE_INVALID: 'invalid',
  RELEASE_MISMATCH: 'invalid',
  RELEASE_UNSIGNED: 'forbidden',
  RELEASE_VERSION_REFUSED: 'conflict',
  RELEASE_INCOMPATIBLE: 'invalid',
  RELEASE_SELF_TEST_FAILED: 'invalid',
  RELEASE_CONFLICT: 'conflict',
  /** A release signed only by an automation key outside the scope the root gives that key (model, audience size, no audience). */
  RELEASE_OUT_OF_SCOPE: 'forbidden',
  /** A release with an audience (a canary) on a device it does not name. */
  RELEASE_NOT_IN_AUDIENCE: 'forbidden',
  RELEASE_NOT_DEPLOYABLE: 'conflict',
  RELEASE_ACTIVATION_INTERRUPTED: 'internal',
  DOWNLOAD_TIMEOUT: 'deadline',
  KEYS_EXIST: 'conflict',
  NATIVE_ADDON_FAILED: 'internal',
  SELFTEST_FAILED: 'internal',
  DRIFT_REFERENCE_INVALID: 'invalid',
  DRIFT_SKETCH_INCOMPATIBLE: 'invalid',
  /** A trainer (the command a training job runs) exited non-zero or was killed by a signal it was not sent by its runner; the details carry the stderr tail. */
  TRAINER_CRASHED: 'internal',
  /** A trainer ran past its maximum duration and was stopped (SIGTERM, then SIGKILL after a grace). */
  TRAINER_TIMED_OUT: 'deadline',
  /** A trainer was stopped because its job was cancelled. */
  TRAINER_CANCELLED: 'unavailable',
  /** A trainer's output folder holds more bytes than the cap allows. */
  TRAINER_OUTPUT_TOO_LARGE: 'exhausted',
  /** A trainer's model.onnx is missing, does not load in onnxruntime, or does not keep the base model's input and output names, types and shapes. */
  TRAINER_OUTPUT_INVALID: 'invalid',
  /** A trainer's metrics.json is missing, is not JSON, or lacks finite train and validation loss and accuracy. */
  TRAINER_METRICS_INVALID: 'invalid',
  /** A trainer cannot start here: its command is not found, or no Python interpreter can import torch and onnx. */
  TRAINER_UNAVAILABLE: 'unavailable',
  /** A base model or dataset a GPU worker downloaded is not the bytes its lease named (sha256 or size differ); nothing was trained on it. */
  TRAINING_ARTIFACT_MISMATCH: 'invalid',
  /** A GPU worker was stopped (SIGTERM) while it ran an attempt and its shutdown grace ran out: the attempt failed and the job is queued again. */
  WORKER_SHUTDOWN: 'unavailable',
  /** A GPU worker's work directory has no room for an attempt's downloads (checked before them) or filled up during one (ENOSPC, EDQUOT). */
  WORKER_DISK_FULL: 'exhausted',
  /** Another live `driftline worker` holds this work directory (its lock file names the process): give each worker its own --work-dir. */
  WORKER_DIR_IN_USE: 'conflict',
  /** A training job's hyperparameters do not fit the trainer's schema. */
  HYPERPARAMETERS_INVALID: 'invalid',
  /** A base model has no dense head (final Gemm, or MatMul then Add, layers on float32 initializers) that a built-in trainer can train. */
  MODEL_HEAD_UNSUPPORTED: 'invalid',
  /** A retraining policy (its triggers, cron expression, job template) is not what the schema allows. */
  RETRAINING_POLICY_INVALID: 'invalid',
  /** No retraining policy is set for the model. */
  RETRAINING_POLICY_NOT_FOUND: 'not_found',
  /** The trigger watcher could not start a training job: no training service is wired into this control plane (or it refused for now). */
  TRAINING_SERVICE_UNAVAILABLE: 'unavailable',
  /** A federated task's settings are not what the API allows (rounds, quorum, strategy, privacy, compression); the message names the field. */
  FEDERATED_TASK_INVALID: 'invalid',
  FEDERATED_TASK_NOT_FOUND: 'not_found',
  /** The call does not fit the task's state (cancel an ended task). */
  FEDERATED_STATE_INVALID: 'conflict',
  /** No device matches the cohort and serves the base version with a trainable head. */
  FEDERATED_NO_CLIENTS: 'conflict',
  /** A round closed at its deadline with fewer updates than min_clients: the round (and the task) failed, no version. */
  FEDERATED_NO_QUORUM: 'unavailable',
  /** The privacy budget (target ε at δ) would be passed by another round. */
  FEDERATED_BUDGET_SPENT: 'exhausted',
  /** A federated task's stored privacy state (clipping bound, the accountant's RDP at each order) is not what this control plane wrote: it is never guessed at, since ε would be wrong. */
  FEDERATED_PRIVACY_STATE_INVALID: 'internal',
  /** An update's length or encoding does not match the task's head. */
  FEDERATED_UPDATE_SHAPE: 'invalid',
  /** An update holds NaN or an infinite value. */
  FEDERATED_UPDATE_NOT_FINITE: 'invalid',
  /** An update's L2 norm is above the task's max_update_norm. */
  FEDERATED_UPDATE_NORM: 'invalid',
  /** An update is larger on the wire than federated.maxUpdateBytes; refused before decoding. */
  FEDERATED_UPDATE_TOO_LARGE: 'exhausted',
  /** An update came after its round closed, or from a head older than max_staleness (async). */
  FEDERATED_UPDATE_STALE: 'conflict',
  /** An update from a device that was not invited to that round, or for another task. */
  FEDERATED_UPDATE_UNEXPECTED: 'forbidden',
  /** A device's federated evaluation does not add up (per-class counts that do not sum to its totals, correct above support, a loss that is not finite). */
  FEDERATED_REPORT_INVALID: 'invalid',
  /** A model's manifest names no trainable head (final Gemm, or MatMul+Add, layers) the learner can train. */
  LEARNER_NO_HEAD: 'invalid',
  /** The device holds fewer labelled samples of the model than the learner needs. */
  LEARNER_NOT_ENOUGH_SAMPLES: 'conflict',
  /** The firmware profile's guards (idle, temperature, time window) do not allow training now. */
  LEARNER_NOT_ALLOWED: 'unavailable',
  /** A round's work passed its CPU-time or memory cap on the device and was stopped. */
  LEARNER_BUDGET_EXCEEDED: 'exhausted',
  /** A call to the control plane's API failed before reaching it (no connection, name not resolved, TLS refused): the gRPC status was UNAVAILABLE with no Driftline code. */
  API_UNAVAILABLE: 'unavailable',
  /** A call to the control plane's API ran past its deadline before any answer. */
  API_DEADLINE_EXCEEDED: 'deadline',
  /** A call to the control plane's API was cancelled by this side (a watch that stopped, an upload whose source failed). */
  API_CANCELLED: 'unavailable',
} as const satisfies Record<string, ErrorKind>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class DriftlineError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'DriftlineError';
    this.code = code;
    this.details = options.details;
  }

  get kind(): ErrorKind {
    return ERROR_CODES[this.code];
  }

  toJSON(): { code: ErrorCode; message: string; details?: Record<string, unknown> } {
    return this.details ? { code: this.code, message: this.message, details: this.details } : { code: this.code, message: this.message };
  }
}

export function isErrorCode(value: string): value is ErrorCode {
  return Object.hasOwn(ERROR_CODES, value);
}

/** Wraps anything thrown into a DriftlineError, keeping a DriftlineError as it is. */
export function asDriftlineError(err: unknown, fallback: ErrorCode = 'INTERNAL'): DriftlineError {
  if (err instanceof DriftlineError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new DriftlineError(fallback, message, { cause: err });
}

/** The listeners a Driftline process opens; a LISTEN_FAILED error names which one, so its caller can name the flag to change. */
export type ListenerName = 'grpc' | 'mqtt' | 'http' | 'local-api';

const LISTENER_LABEL: Record<ListenerName, string> = { grpc: 'gRPC', mqtt: 'MQTT', http: 'artifact HTTP', 'local-api': 'the local API' };

/** LISTEN_FAILED for a listener that could not bind: the port in use, a privileged port, an address this host lacks. */
export function listenFailed(listener: ListenerName, address: string, err: unknown): DriftlineError {
  // grpc-js reports a failed bind as text ("... EADDRINUSE ..."), node:net as an errno code.
  const errno =
    (err as NodeJS.ErrnoException | undefined)?.code ?? /\b(EADDRINUSE|EACCES|EADDRNOTAVAIL)\b/.exec(err instanceof Error ? err.message : String(err))?.[1];
  const reason =
    errno === 'EADDRINUSE'
      ? 'the address is already in use by another process'
      : errno === 'EACCES'
        ? 'permission denied (ports below 1024 need privileges)'
        : errno === 'EADDRNOTAVAIL'
          ? 'this host has no such address'
          : err instanceof Error
            ? err.message
            : String(err);
  return new DriftlineError('LISTEN_FAILED', `cannot listen for ${LISTENER_LABEL[listener]} on ${address}: ${reason}`, {
    cause: err,
    details: { listener, address, ...(errno ? { errno } : {}) },
  });
}

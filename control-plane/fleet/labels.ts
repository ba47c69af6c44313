/** Device labels with a meaning to the control plane itself, beyond operator selectors. */

/** The device label that names a device's cohort (drift status and telemetry rollups group by it). */
export const COHORT_LABEL = 'cohort';

/** A device's cohort from its labels: the `cohort` label, "" when it has none. */
export const cohortOf = (labels: Record<string, string>): string => (Object.hasOwn(labels, COHORT_LABEL) ? labels[COHORT_LABEL]! : '');

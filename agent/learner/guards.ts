import type { LearnerGuards } from '../../common/firmware-profile.js';

/** What the guards are judged on, read just before work starts. */
export interface DeviceConditions {
  nowMs: number;
  /** The hottest sensor; undefined where the host exposes none. */
  temperatureC: number | undefined;
  /** Local inference requests per second over the last minute. */
  inferencesPerSecond: number;
}

/**
 * Why the firmware profile's guards refuse training now, or undefined when they allow it. Pure:
 * the learner reads the conditions, this judges them.
 */
export function guardRefusal(guards: Readonly<LearnerGuards>, conditions: DeviceConditions): string | undefined {
  if (!guards.enabled) return "the firmware profile's learner.enabled is false";
  if (guards.timeWindows.length > 0 && !guards.timeWindows.some((window) => inWindow(window, conditions.nowMs))) {
    return `outside the allowed time windows (${guards.timeWindows.join(', ')} UTC)`;
  }
  if (guards.maxTemperatureC !== undefined && conditions.temperatureC !== undefined && conditions.temperatureC > guards.maxTemperatureC) {
    return `the device is at ${conditions.temperatureC} °C, above the ${guards.maxTemperatureC} °C the profile allows for training`;
  }
  if (guards.maxInferencesPerSecond !== undefined && conditions.inferencesPerSecond > guards.maxInferencesPerSecond) {
    return `the device is not idle: ${conditions.inferencesPerSecond.toFixed(2)} inferences/s, above ${guards.maxInferencesPerSecond}`;
  }
  return undefined;
}

/** Whether a UTC time falls in "HH:MM-HH:MM" (end before start: the window runs past midnight). */
export function inWindow(window: string, nowMs: number): boolean {
  const [from, to] = window.split('-').map(minutesOf) as [number, number];
  const date = new Date(nowMs);
  const now = date.getUTCHours() * 60 + date.getUTCMinutes();
  return from <= to ? now >= from && now < to : now >= from || now < to;
}

const minutesOf = (hhmm: string): number => Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));

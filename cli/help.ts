import type { Help, Option } from 'commander';

/**
 * Option help as a user types the values: `default: 10m`, `default: 1,10,50,100`,
 * `choices: auto, text, json`, rather than commander's JSON (`600000`, `[1,10,50,100]`,
 * `"auto"`). An empty-string default (the "not narrowed" of a filter) is not shown.
 */
export function userFormOptionDescription(option: Option): string {
  const extra: string[] = [];
  if (option.argChoices) extra.push(`choices: ${option.argChoices.join(', ')}`);
  const shown = defaultText(option);
  if (shown !== undefined) extra.push(`default: ${shown}`);
  if (option.envVar !== undefined) extra.push(`env: ${option.envVar}`);
  return extra.length ? `${option.description} (${extra.join(', ')})` : option.description;
}

function defaultText(option: Option): string | undefined {
  if (option.defaultValueDescription) return option.defaultValueDescription;
  const value: unknown = option.defaultValue;
  if (value === undefined || value === '' || !(option.required || option.optional)) return undefined;
  if (Array.isArray(value)) return value.join(',');
  return typeof value === 'object' ? undefined : String(value);
}

export const USER_FORM_HELP: Partial<Help> = { optionDescription: userFormOptionDescription };

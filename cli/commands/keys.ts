import { resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { systemClock } from '../../common/clock.js';
import { join } from 'node:path';
import { parseAutomationScope } from '../../common/trust/automation.js';
import { initKeys, keyFolder, latestRoot, rotateRoot, type RootChange } from '../../common/trust/key-files.js';
import { rootExpiryWarning } from '../../common/trust/root.js';
import { formatDuration } from '../../common/units.js';
import { durationMs, integer, repeated } from '../arguments.js';
import { usageError } from '../connection.js';
import type { GlobalOptions } from '../context.js';
import { createOutput } from '../output.js';

export const DEFAULT_KEYS_DIR = './.driftline-keys';
/** Matches serve's trust.expiryWarning default. */
const DEFAULT_EXPIRY_WARNING_MS = 30 * 86_400_000;

/** Where `keys create-automation` / `rotate --add-automation-key` read the automation key's passphrase; serve reads the same by default. */
export const AUTOMATION_PASSPHRASE_ENV = 'DRIFTLINE_AUTOMATION_KEY_PASSPHRASE';

interface AutomationKeyOptions {
  scopeModels?: string[];
  scopeMaxDevices?: number;
  scopeDevices?: string[];
  passphraseEnv: string;
}

/** The automation key a rotation adds: its scope from the flags, its passphrase from the environment (it is always written encrypted). */
function automationKeyChange(options: AutomationKeyOptions): NonNullable<RootChange['addAutomationKey']> {
  if (!options.scopeModels?.length || options.scopeMaxDevices === undefined)
    throw usageError('an automation key needs a scope: --scope-models a,b --scope-max-devices N');
  const passphrase = process.env[options.passphraseEnv];
  if (!passphrase) throw usageError(`$${options.passphraseEnv} is empty: the automation key is written encrypted with that passphrase`);
  return { scope: parseAutomationScope({ models: options.scopeModels, maxDevices: options.scopeMaxDevices, devices: options.scopeDevices }), passphrase };
}

const commaList = (value: string): string[] =>
  value
    .split(',')
    .map((v) => v.trim())
    .filter(Boolean);

const jsonOf = (command: Command): boolean => Boolean(command.optsWithGlobals<GlobalOptions>().json);
const iso = (ms: number): string => new Date(ms).toISOString();

/** `driftline keys`: offline key management. Private keys stay in the folder and are never printed. */
export function registerKeys(program: Command): void {
  const keys = program.command('keys').description('offline signing keys and root metadata for signed releases');

  keys
    .command('init')
    .description('create root keys, a release key, an online rollback key and root metadata v1 signed by every root key')
    .option('--dir <dir>', 'key folder (private keys 0600; give only its root/ folder to the control plane)', DEFAULT_KEYS_DIR)
    .option('--root-keys <n>', 'number of root keys', integer(1, 16), 3)
    .option('--threshold <n>', 'root signatures required for every root version', integer(1, 16), 2)
    .option('--expires <duration>', 'root metadata lifetime (e.g. 365d, 8760h)', durationMs)
    .option('--rollback-passphrase-env <VAR>', 'encrypt the online rollback key (scrypt + aes-256-gcm) with the passphrase in this environment variable')
    .action((options: { dir: string; rootKeys: number; threshold: number; expires?: number; rollbackPassphraseEnv?: string }, command: Command) => {
      if (options.threshold > options.rootKeys) throw usageError('--threshold cannot exceed --root-keys');
      const passphrase = options.rollbackPassphraseEnv ? process.env[options.rollbackPassphraseEnv] : undefined;
      if (options.rollbackPassphraseEnv && !passphrase) throw usageError(`$${options.rollbackPassphraseEnv} is empty`);
      const result = initKeys({
        dir: options.dir,
        rootKeys: options.rootKeys,
        threshold: options.threshold,
        clock: systemClock,
        lifetimeMs: options.expires,
        rollbackPassphrase: passphrase,
      });
      const output = createOutput(jsonOf(command));
      output.result({ ...result, rootDir: resolve(keyFolder(options.dir).rootDir) }, () => {
        output.line(
          `created ${result.rootKeyIds.length} root keys (threshold ${result.threshold}), release key ${result.releaseKeyId.slice(0, 12)}, rollback key ${result.rollbackKeyId.slice(0, 12)}`,
        );
        output.line(`root metadata v1 (expires ${iso(result.expiresAtMs)}): ${result.rootFile}`);
        output.line(
          `next: driftline serve --trust-root ${keyFolder(options.dir).rootDir}; driftline models push model.onnx --name <name> --sign --keys-dir ${options.dir}`,
        );
      });
    });

  keys
    .command('rotate')
    .description('write the next root version: rotate or revoke keys; signed by a threshold of the old and of the new root keys')
    .option('--dir <dir>', 'key folder', DEFAULT_KEYS_DIR)
    .option('--add-release-key', 'create a new release key')
    .option('--revoke <keyid>', 'revoke a release, rollback or automation key (repeatable)', repeated)
    .option('--add-automation-key', 'create an online automation release key (scoped canaries; needs --scope-models and --scope-max-devices)')
    .option('--scope-models <a,b>', 'with --add-automation-key: the models it may sign', commaList)
    .option('--scope-max-devices <n>', 'with --add-automation-key: the most devices one of its canaries may name', integer(1, 10_000))
    .option('--scope-devices <a,b>', 'with --add-automation-key: the only devices its canaries may name (a canary ring; bounds its total reach)', commaList)
    .option('--passphrase-env <VAR>', 'with --add-automation-key: environment variable holding its passphrase', AUTOMATION_PASSPHRASE_ENV)
    .option('--remove-automation-key <keyid>', 'drop an automation key from the root (repeatable; --revoke also refuses what it signed)', repeated)
    .option('--add-root-keys <n>', 'create this many new root keys', integer(0, 16))
    .option('--remove-root-key <keyid>', 'drop a root key (repeatable)', repeated)
    .option('--threshold <n>', 'new root threshold', integer(1, 16))
    .option('--expires <duration>', 'lifetime of the new version (e.g. 365d)', durationMs)
    .action(
      (
        options: {
          dir: string;
          addReleaseKey?: boolean;
          revoke?: string[];
          addRootKeys?: number;
          removeRootKey?: string[];
          threshold?: number;
          expires?: number;
          addAutomationKey?: boolean;
          removeAutomationKey?: string[];
        } & AutomationKeyOptions,
        command: Command,
      ) => {
        if (!options.addAutomationKey && (options.scopeModels || options.scopeMaxDevices !== undefined || options.scopeDevices))
          throw usageError('--scope-models, --scope-max-devices and --scope-devices go with --add-automation-key');
        const { rootFile, metadata, newKeyIds } = rotateRoot(
          options.dir,
          {
            addReleaseKey: options.addReleaseKey,
            revokeKeyIds: options.revoke,
            addRootKeys: options.addRootKeys,
            removeRootKeyIds: options.removeRootKey,
            threshold: options.threshold,
            lifetimeMs: options.expires,
            ...(options.addAutomationKey ? { addAutomationKey: automationKeyChange(options) } : {}),
            removeAutomationKeyIds: options.removeAutomationKey,
          },
          systemClock,
        );
        const output = createOutput(jsonOf(command));
        output.result({ rootFile, version: metadata.version, expiresAtMs: metadata.expiresAtMs, newKeyIds, revokedKeys: metadata.revokedKeys }, () => {
          output.line(`root metadata v${metadata.version} (expires ${iso(metadata.expiresAtMs)}): ${rootFile}`);
          if (newKeyIds.length > 0) output.line(`new keys: ${newKeyIds.map((k) => k.slice(0, 12)).join(', ')}`);
          output.line('restart driftline serve to hand devices the new root; they walk to it with their next signed desired state');
        });
      },
    );

  keys
    .command('create-automation')
    .description(
      'create an online automation release key, delegated in the next root version with a scope devices enforce: it signs canaries of these models for at most N devices each; ' +
        'written encrypted (scrypt + aes-256-gcm) for serve --automation-key',
    )
    .option('--dir <dir>', 'key folder', DEFAULT_KEYS_DIR)
    .requiredOption('--scope-models <a,b>', 'the models it may sign', commaList)
    .requiredOption('--scope-max-devices <n>', 'the most devices one of its canaries may name', integer(1, 10_000))
    .option('--scope-devices <a,b>', 'the only devices its canaries may name (a canary ring fixed in the root: bounds its total reach)', commaList)
    .option('--passphrase-env <VAR>', 'environment variable holding its passphrase', AUTOMATION_PASSPHRASE_ENV)
    .option('--expires <duration>', 'lifetime of the new root version (e.g. 365d)', durationMs)
    .action((options: { dir: string; expires?: number } & AutomationKeyOptions, command: Command) => {
      const change = automationKeyChange(options);
      const { rootFile, metadata, newKeyIds } = rotateRoot(options.dir, { addAutomationKey: change, lifetimeMs: options.expires }, systemClock);
      const keyId = newKeyIds[0]!;
      const keyFile = resolve(join(options.dir, 'automation-keys', `${keyId}.key`));
      const output = createOutput(jsonOf(command));
      output.result({ keyId, keyFile, scope: change.scope, rootFile, version: metadata.version, expiresAtMs: metadata.expiresAtMs }, () => {
        output.line(
          `created automation key ${keyId.slice(0, 12)} (models ${change.scope.models.join(', ')}; at most ${change.scope.maxDevices} devices per canary): ${keyFile}`,
        );
        output.line(`root metadata v${metadata.version} (expires ${iso(metadata.expiresAtMs)}): ${rootFile}`);
        output.line(
          `next: driftline serve --trust-root ${keyFolder(options.dir).rootDir} --automation-key ${keyFile} (its passphrase in $${AUTOMATION_PASSPHRASE_ENV})`,
        );
      });
    });

  keys
    .command('show')
    .description('show the latest root version: keys, threshold, expiry; warns when it expires soon or has expired')
    .option('--dir <dir>', 'key folder', DEFAULT_KEYS_DIR)
    .addOption(
      new Option('--warn-within <duration>', 'warn when the root expires within this (e.g. 7d)')
        .argParser(durationMs)
        .default(DEFAULT_EXPIRY_WARNING_MS, formatDuration(DEFAULT_EXPIRY_WARNING_MS)),
    )
    .action((options: { dir: string; warnWithin: number }, command: Command) => {
      const root = latestRoot(keyFolder(options.dir));
      const warning = rootExpiryWarning(root, systemClock.now(), options.warnWithin);
      const output = createOutput(jsonOf(command));
      output.result({ ...root, warnings: warning ? [warning] : [] }, () => {
        output.line(`root v${root.version}, threshold ${root.threshold}, expires ${iso(root.expiresAtMs)}`);
        if (warning) output.line(`warning [${warning.code}]: ${warning.message}`);
        output.table(
          ['ROLE', 'KEY ID', 'SCOPE'],
          [
            ...Object.keys(root.rootKeys).map((k) => ['root', k, '-']),
            ...Object.keys(root.releaseKeys).map((k) => ['release', k, 'fleet']),
            ...Object.keys(root.rollbackKeys).map((k) => ['rollback', k, 'rollback directives']),
            ...Object.entries(root.automationKeys).map(([k, a]) => [
              'automation',
              k,
              `canaries of ${a.scope.models.join(', ')} to at most ${a.scope.maxDevices} devices${a.scope.devices ? ` of ${a.scope.devices.length} canary devices` : ''}`,
            ]),
            ...root.revokedKeys.map((k) => ['revoked', k, '-']),
          ],
        );
      });
      // A warning goes to stderr too, so a script reading --json still sees it.
      if (warning && jsonOf(command)) process.stderr.write(`warning [${warning.code}]: ${warning.message}\n`);
    });
}

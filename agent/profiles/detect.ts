import { DriftlineError } from '../../common/errors.js';
import { FALLBACK_PROFILES, type FirmwareProfile } from '../../common/firmware-profile.js';

/** What the agent can learn about its host; a probe gathers them so tests can simulate any device. */
export interface HostFacts {
  /** As Node names it: 'x64', 'arm64', ... */
  arch: string;
  platform: string;
  /** /proc/device-tree/model, without its trailing NUL; absent off device-tree hosts. */
  deviceTreeModel?: string;
  /** First line of /etc/nv_tegra_release; present on Jetson. */
  tegraRelease?: string;
  /** nvidia-smi is on the PATH. */
  nvidiaSmi: boolean;
}

export interface HostProbe {
  facts(): Promise<HostFacts>;
}

export interface ProfileChoice {
  profile: FirmwareProfile;
  /** How it was chosen, for the log. */
  reason: string;
  /** Problems an operator should see, in the log and in the reported state. */
  warnings: string[];
}

/** Node's architecture names to the profiles' names; undefined for one no profile covers. */
export function profileArch(nodeArch: string): FirmwareProfile['arch'] | undefined {
  if (nodeArch === 'x64') return 'x86_64';
  if (nodeArch === 'arm64') return 'arm64';
  return undefined;
}

/**
 * Picks the profile by name, or ("auto") the one whose detection facts all hold on this
 * host, preferring the one that checks the most facts. Unknown hardware gets the generic
 * CPU profile for its architecture, with a warning rather than a refusal: a device that
 * serves on CPU is better than one that does not serve.
 */
export function chooseProfile(requested: string, profiles: ReadonlyMap<string, FirmwareProfile>, facts: HostFacts): ProfileChoice {
  const arch = profileArch(facts.arch);
  if (requested !== 'auto') {
    const profile = profiles.get(requested);
    if (!profile) {
      throw new DriftlineError(
        'CONFIG_INVALID',
        `unknown firmware profile ${JSON.stringify(requested)}; known profiles: ${[...profiles.keys()].join(', ')}, or auto`,
        {
          details: { profile: requested },
        },
      );
    }
    const warnings = arch === profile.arch ? [] : [`firmware profile ${profile.name} is for ${profile.arch} but this host is ${facts.arch}`];
    return { profile, reason: 'configured', warnings };
  }
  if (arch === undefined) {
    throw new DriftlineError('CONFIG_INVALID', `no firmware profile covers the ${facts.arch} architecture; profiles exist for x86_64 and arm64`, {
      details: { arch: facts.arch },
    });
  }
  let best: { profile: FirmwareProfile; matched: string[] } | undefined;
  for (const profile of profiles.values()) {
    if (profile.arch !== arch || profile.detect === undefined) continue;
    const matched = matches(profile.detect, facts);
    if (matched && (best === undefined || matched.length > best.matched.length)) best = { profile, matched };
  }
  if (best) return { profile: best.profile, reason: `detected: ${best.matched.join(', ')}`, warnings: [] };
  const fallback = profiles.get(FALLBACK_PROFILES[arch]);
  if (!fallback) throw new DriftlineError('PROFILE_INVALID', `the fallback firmware profile ${FALLBACK_PROFILES[arch]} is missing`);
  const seen = [
    `arch ${facts.arch}`,
    facts.deviceTreeModel ? `device-tree model ${JSON.stringify(facts.deviceTreeModel)}` : undefined,
    facts.tegraRelease ? `tegra release ${JSON.stringify(facts.tegraRelease)}` : undefined,
    facts.nvidiaSmi ? 'nvidia-smi present' : undefined,
  ]
    .filter(Boolean)
    .join(', ');
  return {
    profile: fallback,
    reason: 'fallback for unknown hardware',
    warnings: [`unknown hardware (${seen}): no firmware profile matches, serving on CPU with ${fallback.name}; pass --profile to choose one`],
  };
}

/** The facts that matched, or undefined when any of the profile's facts does not hold. */
function matches(detect: NonNullable<FirmwareProfile['detect']>, facts: HostFacts): string[] | undefined {
  const matched: string[] = [];
  if (detect.deviceTreeModel) {
    const model = facts.deviceTreeModel;
    const hit = model === undefined ? undefined : detect.deviceTreeModel.find((m) => model.includes(m));
    if (hit === undefined) return undefined;
    matched.push(`device-tree model ${JSON.stringify(model)}`);
  }
  if (detect.tegraRelease) {
    if (!facts.tegraRelease?.startsWith(detect.tegraRelease)) return undefined;
    matched.push(`tegra release ${JSON.stringify(facts.tegraRelease)}`);
  }
  if (detect.nvidiaSmi !== undefined) {
    if (facts.nvidiaSmi !== detect.nvidiaSmi) return undefined;
    matched.push(detect.nvidiaSmi ? 'nvidia-smi present' : 'no nvidia-smi');
  }
  return matched.length > 0 ? matched : undefined;
}

/** Which known fact keeps a provider out of this onnxruntime. */
export type MissingProviderFact = 'arm64-prebuilt-cpu-only' | 'library-lacks-provider' | 'x64-cuda-not-installed' | 'not-on-this-platform';

/**
 * Why an accelerated provider the profile asks for is missing from this onnxruntime, in
 * terms of the fact that applies to this host, so the fix is in the message.
 */
export function missingProviderFact(
  provider: string,
  facts: Pick<HostFacts, 'arch' | 'platform'>,
  libraryPath: string | undefined,
): { fact: MissingProviderFact; message: string } {
  if (facts.platform === 'linux' && facts.arch === 'arm64') {
    return libraryPath === undefined
      ? {
          fact: 'arm64-prebuilt-cpu-only',
          message: `onnxruntime-node's prebuilt linux-arm64 library is CPU-only (microsoft/onnxruntime#21232): set onnxruntime.libraryPath in the firmware profile (or inference.libraryPath in the agent configuration) to a folder with an onnxruntime built for this device's JetPack`,
        }
      : {
          fact: 'library-lacks-provider',
          message: `the onnxruntime loaded from ${libraryPath} has no ${provider} provider: it must be a build for this device's JetPack with CUDA and TensorRT enabled`,
        };
  }
  if (facts.platform === 'linux' && facts.arch === 'x64') {
    return {
      fact: 'x64-cuda-not-installed',
      message: `onnxruntime-node installs the ${provider} provider on linux-x64 only when its install script runs with CUDA 12 chosen: \`ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js\` on a host with network access`,
    };
  }
  return { fact: 'not-on-this-platform', message: `onnxruntime-node has no ${provider} provider on ${facts.platform}-${facts.arch}` };
}

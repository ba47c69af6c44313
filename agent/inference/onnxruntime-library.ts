import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import { DriftlineError } from '../../common/errors.js';

/** glibc's RTLD_NODELETE, which Node's os.constants.dlopen does not list. */
const RTLD_NODELETE = 0x1000;
/** The soname onnxruntime-node's binding links against. */
const LIBRARY_SONAME = 'libonnxruntime.so.1';

/**
 * Loads an onnxruntime shared library built for this device (on Jetson: for its JetPack,
 * with CUDA and TensorRT) before onnxruntime-node's binding loads. The binding then links
 * against the library already in the process, found by its soname, instead of the CPU-only
 * one onnxruntime-node ships for linux-arm64 (microsoft/onnxruntime#21232). It has to run
 * before anything imports onnxruntime-node; returns the file it loaded.
 */
export function preloadOnnxRuntimeLibrary(dir: string): string {
  if (onnxRuntimeLoaded()) {
    throw new DriftlineError(
      'CONFIG_INVALID',
      `onnxruntime is already loaded in this process, so the library in ${dir} cannot replace it; configure the library path before the agent starts`,
    );
  }
  let file = join(dir, LIBRARY_SONAME);
  if (!existsSync(file)) {
    const candidates = existsSync(dir)
      ? readdirSync(dir)
          .filter((f) => /^libonnxruntime\.so(\.\d+)*$/.test(f))
          .sort()
      : [];
    if (candidates.length === 0) {
      throw new DriftlineError(
        'PROVIDER_UNAVAILABLE',
        `no onnxruntime library (${LIBRARY_SONAME}) in ${dir}: build or install onnxruntime for this device's JetPack there, or clear onnxruntime.libraryPath to run on CPU with onnxruntime-node's own library`,
        {
          details: { libraryPath: dir },
        },
      );
    }
    file = join(dir, candidates[candidates.length - 1]!);
  }
  const { RTLD_NOW, RTLD_GLOBAL } = constants.dlopen as Record<string, number>;
  try {
    // process.dlopen loads plain shared libraries too; it then fails because the library is not
    // a Node addon, and RTLD_NODELETE keeps it loaded through the dlclose that follows.
    process.dlopen({ exports: {} } as NodeJS.Module, file, (RTLD_NOW ?? 0) | (RTLD_GLOBAL ?? 0) | RTLD_NODELETE);
  } catch (err) {
    if (!/self-register|did not self-register|Module did not/i.test(err instanceof Error ? err.message : String(err))) {
      throw new DriftlineError('PROVIDER_UNAVAILABLE', `cannot load the onnxruntime library ${file}: ${err instanceof Error ? err.message : String(err)}`, {
        cause: err,
        details: { libraryPath: dir },
      });
    }
  }
  return file;
}

/** The onnxruntime libraries mapped into this process (Linux), for checking which one is in use. */
export function loadedOnnxRuntimeFiles(): string[] {
  try {
    const maps = readFileSync('/proc/self/maps', 'utf8');
    return [
      ...new Set(
        maps
          .split('\n')
          .map((l) => l.slice(l.indexOf('/')))
          .filter((p) => /\/libonnxruntime\.so/.test(p)),
      ),
    ];
  } catch {
    return [];
  }
}

function onnxRuntimeLoaded(): boolean {
  return loadedOnnxRuntimeFiles().length > 0;
}

import { mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * A sysroot for qemu-aarch64 (`-L`) that also describes an arm64 CPU.
 *
 * qemu-user passes the host's /proc/cpuinfo and /sys/devices/system/cpu through to the guest, so
 * onnxruntime's cpuinfo library parses an x86 host's topology as if it were arm64; on some hosts
 * (their cache and cluster layout) it dereferences null while the addon loads, and the binary dies
 * with SIGSEGV before it runs a line. qemu looks up every absolute path under `-L` first, so a
 * sysroot holding the aarch64 libraries (Debian libc6-arm64-cross, linked, not copied) plus a
 * 4-core Cortex-A76 (a Raspberry Pi 5) in proc/ and sys/ gives the guest the CPU a device has.
 */
export function arm64Sysroot(dir: string, libraries = '/usr/aarch64-linux-gnu', cores = 4): string {
  mkdirSync(dir, { recursive: true });
  for (const entry of readdirSync(libraries)) symlinkSync(join(libraries, entry), join(dir, entry));
  const cpus = join(dir, 'sys', 'devices', 'system', 'cpu');
  const all = `0-${cores - 1}`;
  const write = (path: string, text: string): void => {
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, `${text}\n`);
  };
  write(join(cpus, 'kernel_max'), String(cores - 1));
  for (const list of ['possible', 'present', 'online']) write(join(cpus, list), all);
  const cpuinfo: string[] = [];
  for (let i = 0; i < cores; i++) {
    const cpu = join(cpus, `cpu${i}`);
    write(join(cpu, 'topology', 'physical_package_id'), '0');
    write(join(cpu, 'topology', 'core_id'), String(i));
    write(join(cpu, 'topology', 'cluster_cpus_list'), all);
    write(join(cpu, 'topology', 'core_siblings_list'), all);
    write(join(cpu, 'topology', 'thread_siblings_list'), String(i));
    write(join(cpu, 'cpufreq', 'cpuinfo_max_freq'), '2400000');
    write(join(cpu, 'cpufreq', 'cpuinfo_min_freq'), '1500000');
    const caches = [
      { level: 1, type: 'Data', size: '64K' },
      { level: 1, type: 'Instruction', size: '64K' },
      { level: 2, type: 'Unified', size: '512K' },
    ];
    caches.forEach((cache, index) => {
      const at = join(cpu, 'cache', `index${index}`);
      write(join(at, 'level'), String(cache.level));
      write(join(at, 'type'), cache.type);
      write(join(at, 'size'), cache.size);
      write(join(at, 'shared_cpu_list'), String(i));
    });
    cpuinfo.push(
      [
        `processor\t: ${i}`,
        'BogoMIPS\t: 108.00',
        'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp',
        'CPU implementer\t: 0x41',
        'CPU architecture: 8',
        'CPU variant\t: 0x4',
        'CPU part\t: 0xd0b',
        'CPU revision\t: 1',
      ].join('\n'),
    );
  }
  write(join(dir, 'proc', 'cpuinfo'), `${cpuinfo.join('\n\n')}\n`);
  return dir;
}

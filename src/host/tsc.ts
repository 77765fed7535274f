import fs from 'node:fs/promises';

/**
 * The host's TSC frequency in kHz, best effort, for x86_64 guests under TCG.
 *
 * Why: QEMU's microvm machine has no HPET and no ACPI PM timer, so a guest kernel under TCG can
 * only learn its TSC frequency by timing the PIT. That measurement fails when the host is busy,
 * and the kernel then hangs early in boot (seen about one boot in ten here). Under TCG the guest's
 * TSC runs at the host's TSC rate, so passing that rate as `tsc_early_khz=` skips the fragile
 * calibration. Sources, most reliable first:
 *  - "cpu MHz" in /proc/cpuinfo when the host has no cpufreq driver (virtual machines, CI): the
 *    kernel's TSC value then;
 *  - cpufreq base_frequency (intel_pstate), which is the TSC frequency on Intel;
 *  - the "@ 2.40GHz" in an Intel model name.
 * undefined when none applies (the guest then calibrates as usual).
 */
export async function hostTscKhz(root = '/'): Promise<number | undefined> {
  const read = (p: string) => fs.readFile(`${root}${p}`, 'utf8').catch(() => undefined);
  const cpuinfo = await read('proc/cpuinfo');
  if (!cpuinfo) return undefined;
  const firstCpu = cpuinfo.split('\n\n')[0] ?? '';
  const flags = /^flags\s*:\s*(.*)$/m.exec(firstCpu)?.[1]?.split(' ') ?? [];
  if (!flags.includes('constant_tsc')) return undefined;

  const hasCpufreq = (await read('sys/devices/system/cpu/cpu0/cpufreq/scaling_driver')) !== undefined;
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)$/m.exec(firstCpu)?.[1]);
  if (!hasCpufreq && mhz > 0) return Math.round(mhz * 1000);

  const base = Number((await read('sys/devices/system/cpu/cpu0/cpufreq/base_frequency'))?.trim());
  if (base > 0) return base;

  const model = /^model name\s*:.*@\s*([\d.]+)GHz/m.exec(firstCpu)?.[1];
  if (model && /GenuineIntel/.test(firstCpu)) return Math.round(Number(model) * 1_000_000);
  return undefined;
}

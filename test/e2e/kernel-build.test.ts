// The QEMU backend's own guest kernel, end to end under TCG: `openshell-vm kernel build` compiles
// Debian's linux-source-6.12 with openshell-vm's config (everything built in), a second build with
// the same inputs does nothing, an option kconfig cannot enable stops the build by name, and the
// built kernel boots with `run`: no module support, and the gateway's capability checker passes
// every check in a prepared gateway rootfs with nothing loaded.
//
// The build is cached by its key in a kernel cache of its own (<XDG_CACHE_HOME>/openshell-vm-e2e-
// kernel, the host inputs and Node.js linked from the shared cache), so CI compiles it once per machine and
// the other tests keep booting Debian's kernel. The aarch64 build (a cross compile, 14 min cold
// here against 8 min for x86_64) is gated on OPENSHELL_VM_KERNEL_AARCH64=1.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { readEnvironment } from '../../src/config/environment.ts';
import { HostError } from '../../src/errors.ts';
import { type GuestArch, hostArch } from '../../src/host/arch.ts';
import { buildKernel } from '../../src/kernel/build.ts';
import { currentBuild, KERNEL_FILES, targetDir } from '../../src/kernel/cache.ts';
import { parseProvenance } from '../../src/kernel/provenance.ts';
import { mmdebstrapMissing, STAND_IN_BUILD } from '../fixtures/stand-in.ts';
import { type Sandbox, sandbox } from './harness.ts';

const shared = readEnvironment();
/** A kernel cache of its own: what this test builds is not what the other tests boot. */
export const KERNEL_TEST_CACHE = path.join(
  process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'),
  'openshell-vm-e2e-kernel',
);
fs.mkdirSync(KERNEL_TEST_CACHE, { recursive: true, mode: 0o700 });
// The provisioned host inputs (kernel, busybox, the kernel source) and Node.js (the launcher
// looks for it in the cache) are the shared cache's.
for (const name of ['host', 'node']) {
  const link = path.join(KERNEL_TEST_CACHE, name);
  if (!fs.existsSync(link) && fs.existsSync(path.join(shared.cacheDir, name)))
    fs.symlinkSync(path.join(shared.cacheDir, name), link);
}
const env = { ...shared, cacheDir: KERNEL_TEST_CACHE };
const cliEnv = { OPENSHELL_VM_CACHE_DIR: KERNEL_TEST_CACHE };

const BUILD_TIMEOUT_MS = 90 * 60_000;

/** Why a Debian gateway rootfs of `arch` cannot be built on this host (as base-debian.ts refuses it), or undefined. */
function foreignRootfsMissing(arch: GuestArch): string | undefined {
  if (arch === hostArch() || fs.existsSync(`/proc/sys/fs/binfmt_misc/qemu-${arch}`)) return undefined;
  return `building the ${arch} Debian gateway rootfs on this ${hostArch()} host needs qemu-user emulation (apt-get install qemu-user-static binfmt-support)`;
}

function archSuite(arch: GuestArch, skip: string | undefined) {
  describe(`kernel build --arch ${arch} --target qemu, booted`, { skip }, () => {
    let box: Sandbox;
    before(() => {
      box = sandbox();
    });
    after(() => box.cleanup());
    /** The stand-in gateway rootfs 'kgw' (built once; prepare-rootfs finds it the second time). */
    const prepareGatewayRootfs = async () => {
      const prepared = await box.run(['prepare-rootfs', '--name', 'kgw', '--arch', arch, ...STAND_IN_BUILD], {
        env: cliEnv,
        timeoutMs: 600_000,
      });
      assert.equal(prepared.code, 0, prepared.stderr);
    };

    test('builds (or finds by its key) bzImage/Image, kernel.config and provenance.json', {
      timeout: BUILD_TIMEOUT_MS,
    }, async (t) => {
      const t0 = performance.now();
      const run = await box.run(['kernel', 'build', '--arch', arch, '--json'], {
        env: cliEnv,
        timeoutMs: BUILD_TIMEOUT_MS,
      });
      assert.equal(run.code, 0, run.stderr);
      const result = JSON.parse(run.stdout.toString()) as {
        built: boolean;
        dir: string;
        image: string;
        config: string;
      };
      t.diagnostic(
        `${result.built ? 'cold build' : 'cached'}: ${((performance.now() - t0) / 1000).toFixed(0)} s (${result.dir})`,
      );
      assert.match(run.stderr, /kernel: checking the build tools/);
      assert.deepEqual(fs.readdirSync(result.dir).sort(), [
        arch === 'x86_64' ? 'bzImage' : 'Image',
        KERNEL_FILES.config,
        KERNEL_FILES.provenance,
      ]);
      const p = parseProvenance(fs.readFileSync(path.join(result.dir, KERNEL_FILES.provenance), 'utf8'));
      assert.ok(typeof p !== 'string', String(p));
      assert.match(p.version, /^6\.12\.\d+-openshell$/);
      assert.match(p.kernel_source, /^linux-source-6\.12 6\.12\./);
      assert.equal(p.modules, 'none');
      const config = fs.readFileSync(result.config, 'utf8');
      assert.match(config, /^# CONFIG_MODULES is not set$/m);
      assert.doesNotMatch(config, /=m$/m, 'nothing is a module');
      // The gateway's options, every one built in, by the CLI's own checker.
      const check = await box.run(['kernel', 'check', '--builtin', result.config], { env: cliEnv });
      assert.equal(check.code, 0, check.stdout.toString());
      assert.match(check.stdout.toString(), /77 required: 77 built in, 0 modules, 0 missing/);
    });

    test('a second build with the same inputs does nothing and says so', { timeout: 120_000 }, async () => {
      const t0 = performance.now();
      const run = await box.run(['kernel', 'build', '--arch', arch], { env: cliEnv });
      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stderr, /already built with these inputs .*nothing to do/);
      assert.doesNotMatch(run.stderr, /compiling/);
      assert.match(run.stdout.toString(), /^cached: /);
      assert.ok(performance.now() - t0 < 60_000, 'no compile');
    });

    test('an option kconfig cannot enable stops the build by name; the current build stays', {
      timeout: 600_000,
    }, async () => {
      const before = await currentBuild(env, arch, 'qemu');
      assert.ok(before && 'build' in before);
      await assert.rejects(
        buildKernel(env, {
          arch,
          target: 'qemu',
          jobs: 1,
          // KVM's AMD SEV support: its dependencies (KVM, KVM_AMD, the PSP driver) are not in the config.
          extraFragments: [{ source: 'unreachable.kconfig', text: 'CONFIG_KVM_AMD_SEV=y\n' }],
        }),
        (err: unknown) => {
          assert.ok(err instanceof HostError, String(err));
          assert.match(
            err.message,
            /kconfig could not enable 1 requested option of Linux 6\.12\.\d+:\n {2}CONFIG_KVM_AMD_SEV=y \(unreachable\.kconfig\): dropped by kconfig/,
          );
          return true;
        },
      );
      const left = fs.readdirSync(targetDir(env, arch, 'qemu'));
      assert.deepEqual(
        left.filter((n) => n.includes('.tmp-')),
        [],
        'no temporary build directory left',
      );
      const afterwards = await currentBuild(env, arch, 'qemu');
      assert.ok(afterwards && 'build' in afterwards);
      assert.equal(afterwards.build.key, before.build.key, 'the current build is still the good one');
    });

    test('run boots it: the guest kernel is the built one and has no module support', {
      timeout: 300_000,
    }, async () => {
      const run = await box.run(
        [
          'run',
          '--arch',
          arch,
          '--net',
          'none',
          '--',
          '/bin/sh',
          '-c',
          'uname -r; if [ -e /proc/modules ]; then echo modules: yes; else echo modules: none; fi',
        ],
        { env: { ...cliEnv, OPENSHELL_VM_KERNEL: 'built' }, timeoutMs: 280_000 },
      );
      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stdout.toString(), /^6\.12\.\d+-openshell\nmodules: none\n$/);
      await box.assertClean(run);
    });

    test("the gateway's capability checker passes every check in a gateway rootfs, nothing loaded", {
      timeout: 900_000,
      skip: mmdebstrapMissing ?? foreignRootfsMissing(arch),
    }, async () => {
      await prepareGatewayRootfs();
      const rootfs = path.join(box.dataDir, 'instances', 'kgw', 'rootfs');
      const run = await box.run(
        [
          '--arch',
          arch,
          '--rootfs',
          rootfs,
          '--net',
          'none',
          '--exec',
          '/bin/sh',
          '--args',
          '-c',
          'ovm-check-capabilities; rc=$?; [ -e /proc/modules ] && echo "modules: $(wc -l </proc/modules) loaded"; exit $rc',
        ],
        { env: { ...cliEnv, OPENSHELL_VM_KERNEL: 'built' }, timeoutMs: 280_000 },
      );
      const out = run.stdout.toString();
      assert.equal(run.code, 0, `${out}\n${run.stderr}`);
      assert.match(out, /has no module support: every capability is built in/);
      assert.match(out, /kernel 6\.12\.\d+-openshell: \d+ passed, 0 failed/);
      for (const check of [
        'veth_pair',
        'bridge',
        'bridge_nf_call',
        'nf_conntrack',
        'nf_nat',
        'nftables',
        'overlayfs',
        'cgroup2',
      ])
        assert.match(out, new RegExp(`pass {2}${check} `), check);
      assert.doesNotMatch(out, /modules: \d+ loaded/);
      await box.assertClean(run, 'default');
    });

    // libkrun's guest conditions, for real, under QEMU (this host has no libkrun): the built kernel
    // (no modules, as libkrunfw's), no ovm.* mode words on the kernel command line, the init's
    // words in its environment and the init exec'd as PID 1 the way libkrun's init does it
    // (OPENSHELL_VM_GUEST_HANDOFF=krun; the initramfs stands in for libkrun's init and its mounts),
    // then the gateway's host code unchanged to Ready with the stand-in k3s. The agent stays on
    // virtio-serial (no /dev/vhost-vsock here; its --vsock side: src/guest/agent.test.ts).
    test("libkrun's guest handoff under QEMU: init words from the environment, init as PID 1, the gateway Ready with the stand-in k3s", {
      timeout: 900_000,
      skip: mmdebstrapMissing ?? foreignRootfsMissing(arch),
    }, async () => {
      await prepareGatewayRootfs();
      const krunEnv = { ...cliEnv, OPENSHELL_VM_KERNEL: 'built', OPENSHELL_VM_GUEST_HANDOFF: 'krun' };
      let ready: ((kill: (s: NodeJS.Signals) => void) => void) | undefined;
      const readyP = new Promise<(s: NodeJS.Signals) => void>((r) => (ready = r));
      const running = box.run(['--name', 'kgw', '--arch', arch, '--json'], {
        env: krunEnv,
        timeoutMs: 600_000,
        onEvent: (e, child) => {
          if (e.type === 'ready') ready?.(child.kill);
        },
      });
      const first = await Promise.race([readyP, running]);
      if (typeof first !== 'function')
        assert.fail(`the gateway ended before Ready (exit ${first.code}):\n${first.stderr}`);
      try {
        const probe = await box.run(
          [
            'exec',
            'kgw',
            '--',
            'sh',
            '-c',
            'cat /proc/cmdline; echo "pid1: $(tr "\\0" " " </proc/1/cmdline)"; echo "pid1-krun: $(tr "\\0" "\\n" </proc/1/environ | grep -c "^KRUN_\\|^OVM_")"; uname -r; [ -e /proc/modules ] && echo modules: yes || echo modules: none',
          ],
          { env: krunEnv },
        );
        const out = probe.stdout.toString();
        assert.equal(probe.code, 0, `${out}\n${probe.stderr}`);
        const cmdline = out.split('\n')[0] ?? '';
        assert.doesNotMatch(cmdline, /ovm\.(mode|net|init)=/, 'no mode words on the kernel command line');
        assert.match(
          cmdline,
          /(^| )KRUN_INIT=\/sbin\/ovm-init KRUN_INIT_PID1=1 OVM_MODE=gateway OVM_NET=gvproxy( |$)/,
        );
        // PID 1 is the gateway's init (ovm-init exec'd it), and none of the words leaked into it.
        assert.match(out, /^pid1: \/bin\/sh \/sbin\/ovm-gateway-init $/m);
        assert.match(out, /^pid1-krun: 0$/m);
        assert.match(out, /^6\.12\.\d+-openshell\nmodules: none$/m);
        const logs = await box.run(['logs', 'kgw', '--source', 'console'], { env: krunEnv });
        assert.match(
          logs.stdout.toString(),
          /ovm-init: mode gateway \(from the environment\), network gvproxy, agent virtio-serial/,
        );
        assert.doesNotMatch(logs.stdout.toString(), /FATAL/);
      } finally {
        first('SIGINT');
      }
      const result = await running;
      assert.equal(result.code, 0, `Ctrl-C after Ready exits 0:\n${result.stderr}`);
      assert.match(result.stderr, /gateway ready in/);
      await box.assertClean(result, 'kgw');
    });
  });
}

archSuite('x86_64', undefined);
archSuite(
  'aarch64',
  process.env.OPENSHELL_VM_KERNEL_AARCH64 === '1'
    ? undefined
    : 'the aarch64 kernel build (a cross compile: 14 min cold on a 2-core machine, against 8 min for x86_64) runs with OPENSHELL_VM_KERNEL_AARCH64=1',
);

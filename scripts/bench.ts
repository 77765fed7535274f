// Exec round-trip benchmark: `openshell-vm --exec /bin/true` from process start to exit, against
// the same guest artifacts launched by a plain shell script (virtiofsd + QEMU, no TypeScript at
// run time; the guest agent's port served by a few lines of Python that run /bin/true as an agent
// session, then ask for the shutdown, as the tool does). Runs alternate between the two so that
// drift in host load affects both alike.
// Prints a JSON document and a table. usage: node scripts/bench.ts [--runs N] [--arch A] [--no-net] [--no-pool] [--no-snapshot]
// Both sides use the default network (gvproxy). Then, per network (gvproxy, user): time from launch
// until a forwarded port answers HTTP, TCP connect and small-request latency, and download rate.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chooseAccelerator, readHostAccelFacts } from '../src/accel/probe.ts';
import { encodeOpen } from '../src/agent/protocol.ts';
import { readEnvironment } from '../src/config/environment.ts';
import { agentRequest, mergeEnv } from '../src/exec/request.ts';
import { ensureGuestArtifacts } from '../src/guest/artifacts.ts';
import { defaultGuestArch, parseGuestArch } from '../src/host/arch.ts';
import { findQemu, findVirtiofsd, loadGuestInputs } from '../src/host/toolchain.ts';
import { hostTscKhz } from '../src/host/tsc.ts';
import { findGvproxy, GVPROXY_NET, gvproxyArgs, hasServicesFlag } from '../src/net/gvproxy.ts';
import { EXEC_DEFAULTS } from '../src/options/exec-options.ts';
import { qemuArgs, virtiofsdArgs } from '../src/vmm/qemu/argv.ts';
import { virtiofsdFlavour } from '../src/vmm/qemu/backend.ts';
import { benchForwarding } from './bench-net.ts';
import { benchPool, poolTable } from './bench-pool.ts';
import { benchSnapshot, snapshotTable } from './bench-snapshot.ts';

const argv = process.argv.slice(2);
const flag = (name: string) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const runs = Number(flag('--runs') ?? 5);
const arch = flag('--arch') ? parseGuestArch(flag('--arch') as string) : defaultGuestArch();
const root = path.resolve(import.meta.dirname, '..');

const env = readEnvironment();
const guest = await loadGuestInputs(env, arch);
const artifacts = await ensureGuestArtifacts(env, guest);
const accel = chooseAccelerator(arch, await readHostAccelFacts());
const [qemu, virtiofsd, gvproxy] = await Promise.all([
  findQemu(env, arch),
  findVirtiofsd(env),
  findGvproxy(env),
]);
const tsc = arch === 'x86_64' && accel.accel === 'tcg' ? await hostTscKhz() : undefined;

// The plain launch: a shell script with the argv the tool would use; the agent's port on a socket
// the Python client below listens on.
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-bench-'));
const sock = path.join(work, 'vfs.sock');
const agentSock = path.join(work, 'agent.sock');
const args = qemuArgs(
  {
    arch,
    accel: accel.accel,
    vcpus: EXEC_DEFAULTS.vcpus,
    memMib: EXEC_DEFAULTS.memMib,
    kernel: artifacts.kernel,
    initramfs: artifacts.initramfs,
    guestMode: 'exec',
    kernelArgs: tsc ? [`tsc_early_khz=${tsc}`] : [],
    rootDir: artifacts.rootfs,
    rootMode: 'overlay',
    network: { mode: 'gvproxy', socketPath: path.join(work, 'gv-qemu.sock'), mac: GVPROXY_NET.mac },
    agentSocket: agentSock,
    runDir: work,
    socketDir: work,
    consoleLog: path.join(work, 'console.log'),
  },
  { virtiofsSocket: sock },
);
const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
const open = encodeOpen(
  agentRequest(
    { exec: '/bin/true', args: [], env: mergeEnv([]), workdir: '/' },
    { tty: false, rows: 24, cols: 80 },
  ),
).toString('hex');
// The agent's host side, minimal: wait for HELLO (13), OPEN (1) and an empty STDIN (2) on channel
// 1, wait for its EXIT (7), send SHUTDOWN (12); the exit code is the command's.
const agentClient = `import socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1); open(sys.argv[2], 'w').close()
c, _ = s.accept(); buf = b''
def frame(t, ch, p=b''): c.sendall(struct.pack('>IBI', 5 + len(p), t, ch) + p)
while True:
    while len(buf) < 4 or len(buf) < 4 + struct.unpack('>I', buf[:4])[0]:
        d = c.recv(65536)
        if not d: sys.exit(125)
        buf += d
    n = struct.unpack('>I', buf[:4])[0]; t, ch = struct.unpack('>BI', buf[4:9]); p = buf[9:4 + n]; buf = buf[4 + n:]
    if t == 13: frame(1, 1, bytes.fromhex('${open}')); frame(2, 1)
    elif t == 7 and ch == 1: frame(12, 0); code = struct.unpack('>i', p)[0]; break
c.recv(1)
sys.exit(code)
`;
fs.writeFileSync(path.join(work, 'agent-client.py'), agentClient);
const plainScript = path.join(work, 'plain.sh');
fs.writeFileSync(
  plainScript,
  `#!/bin/sh
set -e
rm -f ${q(sock)} ${q(agentSock)} ${q(path.join(work, 'agent.ready'))}
python3 ${q(path.join(work, 'agent-client.py'))} ${q(agentSock)} ${q(path.join(work, 'agent.ready'))} &
agent=$!
${q(gvproxy)} ${gvproxyArgs(work, await hasServicesFlag(gvproxy))
    .map(q)
    .join(' ')} 2>/dev/null &
while [ ! -S ${q(path.join(work, 'gv-qemu.sock'))} ]; do sleep 0.005; done
${q(virtiofsd)} ${virtiofsdArgs(sock, artifacts.rootfs, await virtiofsdFlavour(virtiofsd))
    .map(q)
    .join(' ')} 2>/dev/null &
while [ ! -S ${q(sock)} ] || [ ! -e ${q(path.join(work, 'agent.ready'))} ]; do sleep 0.005; done
${q(qemu)} ${args.map(q).join(' ')}
code=0
wait $agent || code=$?
wait
rm -f ${q(path.join(work, 'gv-api.sock'))} ${q(path.join(work, 'gv-qemu.sock'))} ${q(agentSock)}
exit $code
`,
);

function time(cmd: string, cmdArgs: string[]): number {
  const start = process.hrtime.bigint();
  const r = spawnSync(cmd, cmdArgs, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${cmdArgs.join(' ')} exited ${r.status}: ${r.stderr}`);
  return ms;
}

const tool: number[] = [];
const plain: number[] = [];
// One warm-up of each, not counted (page cache, artifact check).
time(path.join(root, 'bin', 'openshell-vm'), ['-q', '--arch', arch, '--exec', '/bin/true']);
time('sh', [plainScript]);
for (let i = 0; i < runs; i++) {
  tool.push(time(path.join(root, 'bin', 'openshell-vm'), ['-q', '--arch', arch, '--exec', '/bin/true']));
  plain.push(time('sh', [plainScript]));
  process.stderr.write(
    `run ${i + 1}/${runs}: tool ${tool.at(-1)?.toFixed(0)} ms, plain ${plain.at(-1)?.toFixed(0)} ms\n`,
  );
}
fs.rmSync(work, { recursive: true, force: true });

const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
  return { min: Math.round(s[0] as number), median: Math.round(median), max: Math.round(s.at(-1) as number) };
};
const forwarding = process.argv.includes('--no-net') ? undefined : await benchForwarding(root, arch);
// run /bin/true from a warm pool of 2 vs cold, paired, and the idle pool's host RSS (bench-pool.ts).
const pool = process.argv.includes('--no-pool') ? undefined : await benchPool(root, { runs, arch });
// Gateway snapshots: it builds a stand-in gateway rootfs (mmdebstrap), a few minutes; three pairs.
const snapshot = process.argv.includes('--no-snapshot') ? undefined : benchSnapshot(root, { runs: 3, arch });

const result = {
  benchmark: 'exec round trip: --exec /bin/true, process start to exit',
  arch,
  accel: accel.accel,
  vcpus: EXEC_DEFAULTS.vcpus,
  memMib: EXEC_DEFAULTS.memMib,
  runs,
  host: { cpus: os.availableParallelism(), node: process.version, qemu },
  toolMs: stats(tool),
  plainQemuMs: stats(plain),
  overheadPercentOfMedian: Number(((stats(tool).median / stats(plain).median - 1) * 100).toFixed(1)),
  targetPercent: 10,
  samples: { tool: tool.map(Math.round), plainQemu: plain.map(Math.round) },
  forwarding,
  pool,
  snapshot,
};
console.log(JSON.stringify(result, null, 2));
const row = (name: string, s: { min: number; median: number; max: number }) =>
  `| ${name.padEnd(22)} | ${String(s.min).padStart(7)} | ${String(s.median).padStart(7)} | ${String(s.max).padStart(7)} |`;
console.log(`
| launch (${arch}, ${accel.accel}, ${runs} runs) | min ms | median ms | max ms |
|------------------------|---------|---------|---------|
${row('openshell-vm --exec', result.toolMs)}
${row('plain shell + QEMU', result.plainQemuMs)}

overhead of the tool (medians): ${result.overheadPercentOfMedian}% (target: <= ${result.targetPercent}%)`);
if (forwarding) {
  console.log(`
| forwarded port (${arch}) | launch to answer ms | connect ms (median) | request ms (median) | download MB/s |
|---|---|---|---|---|
${forwarding.map((f) => `| --net ${f.net} | ${f.launchToAnswerMs} | ${f.connectMs.median} | ${f.requestMs.median} | ${f.downloadMBps} |`).join('\n')}`);
}
if (pool) console.log(poolTable(pool));
if (snapshot) console.log(snapshotTable(snapshot));

import assert from 'node:assert/strict';
import { Readable, Writable } from 'node:stream';
import { test } from 'node:test';
import { UsageError } from '../errors.ts';
import type { InstanceHandle } from '../instance/start.ts';
import { resolveExecOptions, resolveVmOptions } from '../options/exec-options.ts';
import { resolveGatewayOptions } from '../options/gateway-options.ts';
import { commandIo, signalOfExitCode } from './command-io.ts';
import { LIBRARY_NAMES, rawGatewayOptions, rawRunOptions, rawVmOptions } from './options.ts';
import { RunningInstance } from './running.ts';

const HOST = { cpus: 4, memMib: 8192 };

test('run options map onto the CLI validator: the same values, the library names in errors', () => {
  const { options } = resolveExecOptions(
    rawRunOptions({
      command: ['/bin/echo', 'a b', '--flag'],
      cpus: 3,
      memory: '1GiB',
      arch: 'x86_64',
      env: { A: '1', PATH: '/p' },
      workdir: '/tmp',
      ports: [{ guestPort: 80, hostPort: 8080 }],
      network: 'user',
      bootTimeoutMs: 60_000,
      name: 'lib',
    }),
    HOST,
    LIBRARY_NAMES,
  );
  assert.deepEqual(options.request.args, ['a b', '--flag']);
  assert.equal(options.request.exec, '/bin/echo');
  assert.equal(new Map(options.request.env).get('PATH'), '/p');
  assert.equal(options.request.workdir, '/tmp');
  assert.deepEqual(
    [options.vcpus, options.memMib, options.network, options.instance],
    [3, 1024, 'user', 'lib'],
  );
  assert.equal(options.bootTimeoutMs, 60_000);
  assert.deepEqual(options.forwards, [{ hostAddress: '127.0.0.1', hostPort: 8080, guestPort: 80 }]);

  // The CLI's spelling of the same values gives the same options.
  const cli = resolveExecOptions(
    {
      exec: '/bin/echo',
      args: ['a b', '--flag'],
      vcpus: '3',
      mem: '1GiB',
      arch: 'x86_64',
      env: ['A=1', 'PATH=/p'],
      workdir: '/tmp',
      ports: ['8080:80'],
      net: 'user',
      bootTimeout: '60',
      name: 'lib',
    },
    HOST,
  );
  assert.deepEqual(cli.options, options);
});

test('a command that is not an array of strings, or env that is not an object, is refused with the fix', () => {
  for (const command of ['/bin/sh -c true', [1], undefined, []]) {
    assert.throws(
      () => resolveExecOptions(rawRunOptions({ command } as never), HOST, LIBRARY_NAMES),
      (e: unknown) =>
        e instanceof UsageError &&
        /^command: expected an array of strings|^no command given$/.test(e.message),
      JSON.stringify(command),
    );
  }
  assert.throws(
    () => rawRunOptions({ command: ['/bin/true'], env: ['A=1'] } as never),
    (e: unknown) => e instanceof UsageError && /^env: expected an object/.test(e.message),
  );
});

test('startVm options: the VM part only; the gateway options through the gateway validator', () => {
  const { options } = resolveVmOptions(
    rawVmOptions({ memory: 512, cpus: 1, arch: 'x86_64' }),
    HOST,
    LIBRARY_NAMES,
  );
  assert.deepEqual([options.vcpus, options.memMib], [1, 512]);
  assert.ok(!('request' in options));
  const gw = resolveGatewayOptions(
    rawGatewayOptions({ arch: 'x86_64', memory: '2G', tlsSans: ['gw.example.com'], readyTimeoutMs: 9000 }),
    HOST,
    LIBRARY_NAMES,
  ).options;
  assert.deepEqual([gw.memMib, gw.readyTimeoutMs, gw.extraSans], [2048, 9000, ['gw.example.com']]);
  assert.throws(
    () =>
      resolveGatewayOptions(
        rawGatewayOptions({ arch: 'x86_64', tlsSans: ['bad name'] }),
        HOST,
        LIBRARY_NAMES,
      ),
    /^UsageError: tlsSans: 'bad name' is neither/,
  );
});

test('exit codes above 128 name the Linux signal', () => {
  assert.equal(signalOfExitCode(143), 'SIGTERM');
  assert.equal(signalOfExitCode(137), 'SIGKILL');
  assert.equal(signalOfExitCode(130), 'SIGINT');
  assert.equal(signalOfExitCode(138), 'SIGUSR1'); // Linux's 10, not macOS's 30
  assert.equal(signalOfExitCode(0), undefined);
  assert.equal(signalOfExitCode(127), undefined);
  assert.equal(signalOfExitCode(128), undefined);
  assert.equal(signalOfExitCode(200), undefined);
});

test('command streams: buffered by default, the caller’s streams when given; stdin from text, bytes or a stream', async () => {
  const buffered = commandIo({});
  buffered.io.stdout.write(Buffer.from('out'));
  buffered.io.stderr.write(Buffer.from('err'));
  assert.equal(buffered.io.stdin, undefined);
  assert.deepEqual(buffered.result(3), { exitCode: 3, signal: undefined, stdout: 'out', stderr: 'err' });

  const seen: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _e, done) {
      seen.push(chunk);
      done();
    },
  });
  const streamed = commandIo({ stdout: sink, stdin: 'hi' });
  streamed.io.stdout.write(Buffer.from('to the caller'));
  assert.equal(Buffer.concat(seen).toString(), 'to the caller');
  assert.equal(streamed.result(0).stdout, '');
  const read = async (r: NodeJS.ReadableStream | undefined) => {
    const chunks: Buffer[] = [];
    for await (const c of r as Readable) chunks.push(Buffer.from(c as Buffer));
    return Buffer.concat(chunks).toString();
  };
  assert.equal(await read(streamed.io.stdin), 'hi');
  assert.equal(await read(commandIo({ stdin: new Uint8Array([104, 111]) }).io.stdin), 'ho');
  const stream = Readable.from(['a', 'b']);
  assert.equal(commandIo({ stdin: stream }).io.stdin, stream);
});

test('mappedPort: the forward’s host port; a guest port not forwarded is a UsageError naming the fix', () => {
  const handle = { instance: 'x' } as InstanceHandle;
  const vm = new RunningInstance(handle, [
    { hostAddress: '127.0.0.1', hostPort: 41000, guestPort: 80 },
    { hostAddress: '127.0.0.1', hostPort: 41001, guestPort: 443 },
  ]);
  assert.equal(vm.mappedPort(80), 41000);
  assert.equal(vm.mappedPort(443), 41001);
  assert.throws(
    () => vm.mappedPort(8080),
    (e: unknown) =>
      e instanceof UsageError &&
      e.message === 'mappedPort(8080): guest port 8080 is not forwarded' &&
      /ports: \[\{ guestPort: 8080 \}\] \(forwarded: 80, 443\)/.test(e.hint ?? ''),
  );
  assert.throws(() => new RunningInstance(handle, []).mappedPort(80), /not forwarded/);
});

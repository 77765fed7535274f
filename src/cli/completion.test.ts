import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { OptionSpec } from './args.ts';
import { bashScript, COMMAND_OPTIONS, completionModel, fishScript, zshScript } from './completion.ts';
import { COMMANDS } from './help.ts';

const MAIN = path.join(import.meta.dirname, 'main.ts');
const BIN = path.join(import.meta.dirname, '..', '..', 'bin');

/** A data dir with instances `alpha` and `beta`, and the CLI first on PATH as `openshell-vm`. */
function fixture(t: { after: (fn: () => void) => void }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-complete-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const name of ['alpha', 'beta']) fs.mkdirSync(path.join(dir, 'instances', name), { recursive: true });
  return {
    env: {
      ...process.env,
      OPENSHELL_VM_DATA_DIR: dir,
      PATH: `${BIN}:${path.dirname(process.execPath)}:${process.env.PATH}`,
    },
    dir,
  };
}

function has(shell: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${shell}`]).status === 0;
}

/** What the bash completion offers for a command line whose last word is being completed. */
function bashComplete(env: NodeJS.ProcessEnv, line: string[]): string[] {
  const words = line.map((w) => `'${w}'`).join(' ');
  const r = spawnSync(
    'bash',
    [
      '-c',
      `source <(openshell-vm completion bash) && COMP_WORDS=(${words}) && COMP_CWORD=${line.length - 1} && _openshell_vm && printf '%s\\n' "\${COMPREPLY[@]}"`,
    ],
    { env, encoding: 'utf8' },
  );
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split('\n').filter(Boolean).sort();
}

test('bash can source the script, and it completes commands, options, values and instance names', (t) => {
  const { env } = fixture(t);
  const r = spawnSync('bash', ['-c', 'source <(openshell-vm completion bash) && complete -p openshell-vm'], {
    env,
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /complete .*-F _openshell_vm openshell-vm/);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'st']), ['start', 'status', 'stop']);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'exec', '--w']), ['--workdir']);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'status', '']), ['alpha', 'beta']);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'shell', 'a']), ['alpha']);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'run', '--name', '']), ['alpha', 'beta']);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'run', '--arch', '']), ['aarch64', 'x86_64']);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'logs', 'alpha', '--source', 'v']), [
    'virtiofsd',
    'vmm',
  ]);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'completion', '']), ['bash', 'fish', 'zsh']);
  assert.deepEqual(bashComplete(env, ['openshell-vm', '--debug', 'kernel', '']), ['build', 'check']);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'kernel', 'check', '--b']), ['--builtin']);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'kernel', 'build', '--target', '']), [
    'all',
    'libkrunfw',
    'qemu',
  ]);
  // --source is a log's name for logs, a tarball (files: bash's default) for kernel build.
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'kernel', 'build', '--source', 'c']), []);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'run', '--cp']), ['--cpus']);
  // The value of --name is skipped when looking for the command; after -- it is the guest's.
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'run', '--mem', '256', '--det']), ['--detach']);
  assert.deepEqual(bashComplete(env, ['openshell-vm', 'exec', 'alpha', '--', 'l']), []);
  assert.ok(
    !bashComplete(env, ['openshell-vm', 'run', '--']).includes('--ready-timeout'),
    'a gateway option',
  );
});

test('zsh and fish: the scripts parse; fish completes from them (skipped without the shell)', (t) => {
  const { env, dir } = fixture(t);
  const zsh = path.join(dir, 'c.zsh');
  fs.writeFileSync(zsh, zshScript(completionModel()));
  if (has('zsh')) {
    const syntax = spawnSync('zsh', ['-n', zsh], { encoding: 'utf8' });
    assert.equal(syntax.status, 0, syntax.stderr);
    const r = spawnSync(
      'zsh',
      ['-f', '-c', `autoload -Uz compinit && compinit -u && source ${zsh} && print $_comps[openshell-vm]`],
      {
        env: { ...env, ZDOTDIR: dir },
        encoding: 'utf8',
      },
    );
    assert.equal(r.stdout.trim(), '_openshell_vm', r.stderr);
  } else {
    t.diagnostic('zsh is not installed: the zsh script was not checked (apt-get install zsh)');
  }
  const fish = path.join(dir, 'c.fish');
  fs.writeFileSync(fish, fishScript(completionModel()));
  if (has('fish')) {
    const syntax = spawnSync('fish', ['-n', fish], { encoding: 'utf8' });
    assert.equal(syntax.status, 0, syntax.stderr);
    const complete = (line: string) => {
      const r = spawnSync('fish', ['--no-config', '-c', `source ${fish}; complete -C '${line}'`], {
        env,
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split('\t')[0])
        .sort();
    };
    assert.deepEqual(complete('openshell-vm st'), ['start', 'status', 'stop']);
    assert.deepEqual(complete('openshell-vm status '), ['alpha', 'beta']);
    assert.deepEqual(complete('openshell-vm exec --work'), ['--workdir']);
    assert.deepEqual(complete('openshell-vm run --net '), ['gvproxy', 'none', 'tsi', 'user']);
  } else {
    t.diagnostic('fish is not installed: the fish script was not checked (apt-get install fish)');
  }
});

/** Runs the CLI's parser of `key` ('status', 'kernel check') with `words` and --help: exit 0 means it knew every word. */
function accepts(key: string, words: string[]): { status: number | null; stderr: string } {
  return spawnSync(process.execPath, [MAIN, ...key.split(' '), ...words, '--help'], {
    encoding: 'utf8',
    env: { ...process.env, OPENSHELL_VM_DATA_DIR: path.join(os.tmpdir(), 'ovm-complete-none') },
  });
}

test("every option completion offers is one its command's parser takes", () => {
  for (const [command, specs] of Object.entries(COMMAND_OPTIONS)) {
    // One run with each option's main word, one with each's other spelling (-p, --cpus): a
    // value option given twice, in two spellings, would be refused as given twice.
    const spell = (pick: (s: OptionSpec) => string | undefined) =>
      specs.flatMap((s) => {
        const word = pick(s);
        return word === undefined ? [] : s.kind === 'flag' ? [word] : [word, 'x'];
      });
    for (const words of [
      spell((s) => `--${s.name}`),
      spell((s) => (s.short ? `-${s.short}` : s.aliases?.[0] ? `--${s.aliases[0]}` : undefined)),
    ]) {
      const r = accepts(command, words);
      assert.equal(r.status, 0, `${command} ${words.join(' ')}: ${r.stderr}`);
    }
  }
  // And the check can fail: an option the parser does not have.
  assert.equal(accepts('status', ['--frobnicate']).status, 2);
});

test("every option a command's --help documents is one completion offers", () => {
  const model = completionModel();
  const keys = COMMANDS.flatMap((c) =>
    model.verbKeyed.includes(c.name) ? (c.verbs ?? []).map((v) => `${c.name} ${v}`) : [c.name],
  );
  for (const key of keys) {
    const r = spawnSync(process.execPath, [MAIN, ...key.split(' '), '--help'], { encoding: 'utf8' });
    assert.equal(r.status, 0, `${key} --help: ${r.stderr}`);
    // The usage lines, and the option lines (two spaces, then the option words up to the
    // description's column).
    const documented = r.stdout
      .split('\n')
      .flatMap((l) =>
        /^(Usage:| {7}openshell-vm )/.test(l)
          ? [l]
          : /^ {2}-/.test(l)
            ? [l.slice(2).split(/ {2,}/)[0] ?? '']
            : [],
      )
      .flatMap((l) => l.match(/(?<![\w-])--?[a-zA-Z][\w-]*/g) ?? []);
    if (key !== 'completion' && key !== 'help')
      assert.ok(documented.length, `${key} --help documents options`);
    // run's help documents the seed form (--exec PATH --args ...) too: the bare command's options.
    // A verb's help may show its siblings' usage too (kernel check --help shows kernel build's).
    const siblings = Object.keys(model.flags).filter(
      (k) => k.includes(' ') && k.split(' ')[0] === key.split(' ')[0],
    );
    const offered = new Set([
      ...(model.flags[key] ?? []),
      ...(key === 'run' ? (model.flags[''] ?? []) : []),
      ...(key.includes(' ') ? siblings.flatMap((k) => model.flags[k] ?? []) : []),
    ]);
    for (const word of documented)
      assert.ok(offered.has(word), `${key}: ${word} is in --help, not in completion`);
  }
});

test('the scripts are built from the model: a command and its options appear in each', () => {
  const model = completionModel();
  for (const script of [bashScript(model), zshScript(model), fishScript(model)]) {
    for (const c of COMMANDS) assert.ok(script.includes(c.name), c.name);
    assert.ok(script.includes('ready-timeout'));
    assert.ok(script.includes('completion instances'));
  }
});

/**
 * The applet names compiled into a busybox binary, read from the binary itself (its sorted,
 * NUL-separated applet name table starting with "[" and "[["), so no guest-architecture binary
 * has to run on the host.
 */
export function busyboxApplets(binary: Uint8Array): string[] {
  const buf = Buffer.from(binary.buffer, binary.byteOffset, binary.byteLength);
  const marker = Buffer.from('[\0[[\0', 'latin1');
  const start = buf.indexOf(marker);
  if (start < 0) throw new Error('busybox: applet table not found (is this a busybox binary?)');
  const names: string[] = [];
  let pos = start;
  while (pos < buf.length) {
    const end = buf.indexOf(0, pos);
    if (end <= pos) break;
    const name = buf.toString('latin1', pos, end);
    if (!/^[\][a-z0-9_.-]+$/.test(name)) break;
    names.push(name);
    pos = end + 1;
  }
  for (const required of ['sh', 'mount', 'switch_root', 'insmod', 'poweroff']) {
    if (!names.includes(required))
      throw new Error(`busybox: applet '${required}' missing from its applet table`);
  }
  return names;
}

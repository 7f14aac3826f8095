import { isIP } from 'node:net';

/** An address or CIDR range as `allowed_hosts` may list it: `10.0.0.0/8`, `192.168.1.5`, `fd00::/8`, `[::1]`. */
export function parseRange(entry: string): { ip: string; prefix: number; family: 'ipv4' | 'ipv6' } | undefined {
  const slash = entry.indexOf('/');
  let ip = slash === -1 ? entry : entry.slice(0, slash);
  if (ip.startsWith('[') && ip.endsWith(']')) ip = ip.slice(1, -1);
  const version = isIP(ip);
  if (version === 0) return undefined;
  const max = version === 4 ? 32 : 128;
  const prefixText = slash === -1 ? String(max) : entry.slice(slash + 1);
  if (!/^\d{1,3}$/.test(prefixText)) return undefined;
  const prefix = Number(prefixText);
  if (prefix > max) return undefined;
  return { ip, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

import { BlockList, isIP } from 'node:net';
import { parseRange } from '../../config/network.js';

/**
 * Where an address points, for the outbound network policy. Anything but `public` is inside some
 * network Outrider sits in (or no network at all), and is refused unless `[outbound] allowed_hosts`
 * names it: a URL a backend hands over can come from a user, and the edge must not become a way
 * into the machine, the private network or the cloud's metadata service.
 */
export type AddressKind =
  | 'public'
  | 'unspecified'
  | 'loopback'
  | 'private'
  | 'link-local'
  | 'metadata'
  | 'shared (CGNAT)'
  | 'multicast'
  | 'broadcast'
  | 'reserved';

/** Ranges by kind, most specific first (the metadata addresses sit inside link-local, private and CGNAT). */
const RANGES: [Exclude<AddressKind, 'public'>, string[]][] = [
  // AWS, GCP, Azure, OpenStack (IPv4 and AWS's IPv6), Alibaba Cloud.
  ['metadata', ['169.254.169.254/32', '169.254.170.2/32', 'fd00:ec2::254/128', '100.100.100.200/32']],
  ['unspecified', ['0.0.0.0/8', '::/128']],
  ['loopback', ['127.0.0.0/8', '::1/128']],
  ['broadcast', ['255.255.255.255/32']],
  ['private', ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7', 'fec0::/10']],
  ['link-local', ['169.254.0.0/16', 'fe80::/10']],
  ['shared (CGNAT)', ['100.64.0.0/10']],
  ['multicast', ['224.0.0.0/4', 'ff00::/8']],
  [
    'reserved',
    [
      // IETF protocol assignments, documentation, 6to4 relay, benchmarking, former class E.
      '192.0.0.0/24',
      '192.0.2.0/24',
      '198.51.100.0/24',
      '203.0.113.0/24',
      '192.88.99.0/24',
      '198.18.0.0/15',
      '240.0.0.0/4',
      // Discard, IETF assignments (Teredo and ORCHID inside), documentation, 6to4 and local NAT64,
      // which carry an IPv4 address of any kind inside (well-known NAT64 is judged by the address
      // it carries, in normalize); IPv4-compatible addresses (deprecated).
      '100::/64',
      '2001::/23',
      '2001:db8::/32',
      '2002::/16',
      '64:ff9b:1::/48',
      '::/96',
    ],
  ],
];

const LISTS = RANGES.map(([kind, cidrs]) => [kind, toBlockList(cidrs)] as const);
/** Well-known NAT64, for a form `normalize` could not read the IPv4 address out of. */
const NAT64 = toBlockList(['64:ff9b::/96']);

/** The kind of a literal IPv4 or IPv6 address (an IPv4-mapped IPv6 address counts as its IPv4 one). */
export function addressKind(address: string): AddressKind {
  const [ip, family] = normalize(address);
  for (const [kind, list] of LISTS) if (list.check(ip, family)) return kind;
  if (family === 'ipv6' && NAT64.check(ip, 'ipv6')) return 'reserved';
  return 'public';
}

/**
 * `[outbound] allowed_hosts`, read once. `*` lets any host whose addresses are public through (an
 * empty list means the same); a name (`objects.example.com`), a wildcard (`*.example.com`), an
 * address or a CIDR range lets that host or range through even when it is internal, which is how a
 * site opens its private object store.
 */
export class HostRules {
  readonly anyPublic: boolean;
  private readonly names = new Set<string>();
  private readonly suffixes: string[] = [];
  private readonly ranges = new BlockList();
  private hasRanges = false;

  constructor(entries: readonly string[]) {
    this.anyPublic = entries.length === 0 || entries.includes('*');
    for (const raw of entries) {
      const entry = raw.toLowerCase();
      if (entry === '*') continue;
      const range = parseRange(entry);
      if (range !== undefined) {
        this.ranges.addSubnet(range.ip, range.prefix, range.family);
        this.hasRanges = true;
      } else if (entry.startsWith('*.')) this.suffixes.push(entry.slice(1));
      else this.names.add(entry);
    }
  }

  /** A host named in the list (by name or wildcard): allowed at any address. */
  namesHost(hostname: string): boolean {
    const host = hostname.toLowerCase();
    return this.names.has(host) || this.suffixes.some((suffix) => host.endsWith(suffix));
  }

  /** An address listed, or inside a listed range. */
  listsAddress(address: string): boolean {
    if (!this.hasRanges) return false;
    const [ip, family] = normalize(address);
    return this.ranges.check(ip, family);
  }
}

/**
 * What a send-url instruction may add to the policy (Workhorse's `SSRFFilter`, `AllowLocalhost`,
 * `AllowedURIs`): it can only refuse more than `[outbound]` does, never less.
 */
export interface Narrowing {
  /** Refuse internal addresses (all but loopback, which `allowLocalhost` decides). */
  ssrfFilter: boolean;
  /** false: refuse loopback and unspecified addresses. */
  allowLocalhost: boolean;
  /** Hosts (from URLs) the SSRF filter lets through when the config does too. */
  allowedHosts: readonly string[];
}

/**
 * Why connecting to `address` for `hostname` is refused, or undefined when it is allowed: the
 * config decides first, then the instruction's narrowing. `allowedAddresses` are the resolved
 * addresses of the narrowing's allowed hosts.
 */
export function refusal(
  hostname: string,
  address: string,
  rules: HostRules,
  narrowing?: Narrowing,
  allowedAddresses: readonly string[] = [],
): string | undefined {
  const kind = addressKind(address);
  const allowed = rules.namesHost(hostname) || rules.listsAddress(address) || (rules.anyPublic && kind === 'public');
  if (!allowed) {
    return kind === 'public'
      ? `host ${hostname} is not in [outbound] allowed_hosts`
      : `${hostname} is at ${address}, a ${kind} address, and [outbound] allowed_hosts does not list it`;
  }
  if (narrowing === undefined || kind === 'public') return undefined;
  const local = kind === 'loopback' || kind === 'unspecified';
  if (local && !narrowing.allowLocalhost)
    return `${hostname} is at ${address}, a ${kind} address, and the instruction says AllowLocalhost: false`;
  if (!local && narrowing.ssrfFilter) {
    const host = hostname.toLowerCase();
    const [ip] = normalize(address);
    if (!narrowing.allowedHosts.includes(host) && !allowedAddresses.some((a) => normalize(a)[0] === ip)) {
      return `${hostname} is at ${address}, a ${kind} address, refused by the instruction's SSRFFilter`;
    }
  }
  return undefined;
}

/** `::ffff:127.0.0.1` is 127.0.0.1 to the kernel, so it is to the policy too. */
function normalize(address: string): [string, 'ipv4' | 'ipv6'] {
  const bare = address.startsWith('[') ? address.slice(1, -1) : address;
  if (isIP(bare) === 4) return [bare, 'ipv4'];
  const mapped = /^(?:0{0,4}:){0,4}:?(?:0{0,4}:)?ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(bare);
  if (mapped !== null) return [mapped[1] as string, 'ipv4'];
  // NAT64 (64:ff9b::/96) reaches the IPv4 address it carries: on an IPv6-only host with DNS64
  // every public name resolves there, so it is judged by that address.
  const nat64 = /^64:ff9b::(\d+\.\d+\.\d+\.\d+)$/i.exec(bare);
  if (nat64 !== null) return [nat64[1] as string, 'ipv4'];
  const hexMapped = /^(?:::ffff|64:ff9b:):([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(bare);
  if (hexMapped !== null) {
    const hi = Number.parseInt(hexMapped[1] as string, 16);
    const lo = Number.parseInt(hexMapped[2] as string, 16);
    return [`${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`, 'ipv4'];
  }
  return [bare, 'ipv6'];
}

function toBlockList(cidrs: string[]): BlockList {
  const list = new BlockList();
  for (const cidr of cidrs) {
    const range = parseRange(cidr);
    if (range === undefined) throw new Error(`bad range ${cidr}`);
    list.addSubnet(range.ip, range.prefix, range.family);
  }
  return list;
}

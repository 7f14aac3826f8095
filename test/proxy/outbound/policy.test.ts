import { describe, expect, it } from 'vitest';
import { addressKind, HostRules, refusal } from '../../../proxy/outbound/policy.js';

describe('the outbound address policy', () => {
  it('tells public addresses from every internal kind, IPv4 and IPv6', () => {
    const table: [string, string][] = [
      ['93.184.216.34', 'public'],
      ['2606:2800:220:1:248:1893:25c8:1946', 'public'],
      ['127.0.0.1', 'loopback'],
      ['127.255.0.9', 'loopback'],
      ['::1', 'loopback'],
      ['::ffff:127.0.0.1', 'loopback'],
      ['::ffff:7f00:1', 'loopback'],
      ['0.0.0.0', 'unspecified'],
      ['::', 'unspecified'],
      ['10.0.0.1', 'private'],
      ['172.16.5.4', 'private'],
      ['172.31.255.255', 'private'],
      ['172.32.0.1', 'public'],
      ['192.168.1.1', 'private'],
      ['fd12:3456::1', 'private'],
      ['::ffff:10.0.0.1', 'private'],
      ['169.254.169.254', 'metadata'],
      ['fd00:ec2::254', 'metadata'],
      ['169.254.1.1', 'link-local'],
      ['fe80::1', 'link-local'],
      ['100.64.0.1', 'shared (CGNAT)'],
      ['100.127.255.255', 'shared (CGNAT)'],
      ['100.128.0.1', 'public'],
      ['224.0.0.251', 'multicast'],
      ['ff02::1', 'multicast'],
      ['255.255.255.255', 'broadcast'],
      ['240.0.0.1', 'reserved'],
      ['192.0.2.10', 'reserved'],
      ['2001:db8::1', 'reserved'],
      // Well-known NAT64 is judged by the IPv4 address it carries (DNS64 maps every public name there).
      ['64:ff9b::a00:1', 'private'],
      ['64:ff9b::7f00:1', 'loopback'],
      ['64:ff9b::5db8:d822', 'public'],
      ['64:ff9b::10.0.0.1', 'private'],
      ['64:ff9b:0:0:0:0:7f00:1', 'reserved'],
      ['64:ff9b:1::1', 'reserved'],
      ['2002:a00:1::1', 'reserved'],
    ];
    for (const [address, kind] of table) expect(addressKind(address), address).toBe(kind);
  });

  it('lets public hosts through by default and nothing internal', () => {
    const open = new HostRules([]);
    expect(refusal('example.com', '93.184.216.34', open)).toBeUndefined();
    expect(refusal('evil.example', '127.0.0.1', open)).toMatch(/evil\.example is at 127\.0\.0\.1, a loopback address/);
    expect(refusal('metadata', '169.254.169.254', open)).toMatch(/metadata address/);
  });

  it('opens internal hosts by name, wildcard, address or range; a list without "*" lets nothing else through', () => {
    const rules = new HostRules(['minio.internal', '*.store.internal', '10.20.0.0/16', '[fd00::5]']);
    expect(refusal('minio.internal', '10.9.9.9', rules)).toBeUndefined();
    expect(refusal('eu.store.internal', '192.168.3.3', rules)).toBeUndefined();
    expect(refusal('anything', '10.20.3.4', rules)).toBeUndefined();
    expect(refusal('anything', '10.21.3.4', rules)).toMatch(/private address/);
    expect(refusal('v6', 'fd00::5', rules)).toBeUndefined();
    expect(refusal('example.com', '93.184.216.34', rules)).toMatch(/not in \[outbound\] allowed_hosts/);
    const withPublic = new HostRules(['*', 'minio.internal']);
    expect(refusal('example.com', '93.184.216.34', withPublic)).toBeUndefined();
    expect(refusal('minio.internal', '10.9.9.9', withPublic)).toBeUndefined();
    expect(refusal('other.internal', '10.9.9.9', withPublic)).toMatch(/private address/);
  });

  it("narrows with an instruction's SSRFFilter, AllowLocalhost and AllowedURIs, never widens", () => {
    const open = new HostRules(['*', '127.0.0.1', '10.0.0.0/8']);
    const filter = { ssrfFilter: true, allowLocalhost: true, allowedHosts: ['registry.internal'] };
    expect(refusal('x', '10.1.1.1', open)).toBeUndefined();
    expect(refusal('x', '10.1.1.1', open, filter)).toMatch(/SSRFFilter/);
    expect(refusal('registry.internal', '10.1.1.1', open, filter)).toBeUndefined();
    expect(refusal('alias', '10.1.1.1', open, filter, ['10.1.1.1'])).toBeUndefined();
    expect(refusal('x', '127.0.0.1', open, filter)).toBeUndefined();
    expect(refusal('x', '127.0.0.1', open, { ...filter, allowLocalhost: false })).toMatch(/AllowLocalhost: false/);
    expect(refusal('x', '93.184.216.34', open, { ...filter, allowLocalhost: false })).toBeUndefined();
    const closed = new HostRules([]);
    expect(refusal('registry.internal', '10.1.1.1', closed, filter)).toMatch(/allowed_hosts does not list it/);
  });
});

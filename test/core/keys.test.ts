import fc from 'fast-check';
import { fromString, toString } from 'uint8arrays';
import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '../../src/core/errors.ts';
import { deviceIdFromPublicKey, isDeviceId, publicKeyFromDeviceId, signerFromSeed, verifySignature, withContext } from '../../src/core/keys.ts';
import { expectCoreError, flipBit, runs, signerOf } from './helpers.ts';

const hex = (s: string) => Uint8Array.from(Buffer.from(s, 'hex'));
const text = (s: string) => new TextEncoder().encode(s);

// RFC 8032, section 7.1, TEST 1.
const RFC_SEED = hex('9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60');
const RFC_PUBLIC = hex('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a');
const RFC_SIG_EMPTY = hex('e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b');
// The PeerId libp2p derives for that key (computed with @libp2p/crypto's publicKeyToProtobuf + an identity multihash).
const RFC_PEER_ID = '12D3KooWQK1wnefoLrcVHbbnf5tLzbopUd3K3bFAoJpA7YJgL5pV';

describe('signers', () => {
  it('match the RFC 8032 test vector and the libp2p PeerId of the key', () => {
    const signer = signerFromSeed(RFC_SEED);
    expect(signer.publicKey).toEqual(RFC_PUBLIC);
    expect(new Uint8Array(signer.sign(new Uint8Array()))).toEqual(RFC_SIG_EMPTY);
    expect(signer.device).toBe(RFC_PEER_ID);
    expect(deviceIdFromPublicKey(RFC_PUBLIC)).toBe(RFC_PEER_ID);
    expect(publicKeyFromDeviceId(RFC_PEER_ID)).toEqual(RFC_PUBLIC);
    expect(verifySignature(RFC_PEER_ID, new Uint8Array(), RFC_SIG_EMPTY)).toBe(true);
  });

  it('are deterministic per seed and distinct across seeds', () => {
    const a = signerFromSeed(new Uint8Array(32).fill(1));
    const again = signerFromSeed(new Uint8Array(32).fill(1));
    const b = signerFromSeed(new Uint8Array(32).fill(2));
    expect(again.device).toBe(a.device);
    expect(again.sign(text('m'))).toEqual(a.sign(text('m')));
    expect(b.device).not.toBe(a.device);
  });

  it('give Ed25519 PeerIds that round-trip through their public key', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), (seed) => {
        const signer = signerFromSeed(seed);
        expect(signer.device.startsWith('12D3KooW')).toBe(true);
        expect(isDeviceId(signer.device)).toBe(true);
        expect(publicKeyFromDeviceId(signer.device)).toEqual(signer.publicKey);
        expect(deviceIdFromPublicKey(signer.publicKey)).toBe(signer.device);
      }),
      { numRuns: runs(50) },
    );
  });

  it('refuse seeds and public keys that are not 32 bytes', () => {
    expectCoreError(() => signerFromSeed(new Uint8Array(31)), InvalidInputError, 'BAD_KEY');
    expectCoreError(() => signerFromSeed(new Uint8Array(33)), InvalidInputError, 'BAD_KEY');
    expectCoreError(() => deviceIdFromPublicKey(new Uint8Array(33)), InvalidInputError, 'BAD_KEY');
  });
});

describe('device ids', () => {
  // A CIDv0-style sha256 multihash: valid base58btc, but not an Ed25519 identity multihash.
  const sha256PeerId = toString(Uint8Array.from([0x12, 0x20, ...new Uint8Array(32).fill(7)]), 'base58btc');
  const wrongKeyType = (() => {
    const bytes = fromString(RFC_PEER_ID, 'base58btc');
    const copy = Uint8Array.from(bytes);
    copy[3] = 0x02; // protobuf KeyType secp256k1 instead of Ed25519
    return toString(copy, 'base58btc');
  })();
  const bad = ['', 'not-base58-0OIl', 'x'.repeat(65), sha256PeerId, wrongKeyType, RFC_PEER_ID.slice(0, -1)];

  it.each(bad)('refuses %j with BAD_DEVICE_ID', (id) => {
    expectCoreError(() => publicKeyFromDeviceId(id), InvalidInputError, 'BAD_DEVICE_ID', { device: id });
    expect(isDeviceId(id)).toBe(false);
  });

  it('says non-strings are not device ids', () => {
    for (const value of [undefined, null, 42, {}, fromString(RFC_PEER_ID, 'base58btc')]) expect(isDeviceId(value)).toBe(false);
  });
});

describe('verifySignature', () => {
  const alice = signerOf('keys-alice');
  const bob = signerOf('keys-bob');
  const message = text('fieldmesh');
  const sig = alice.sign(message);

  it('accepts the signer\'s signature of the message', () => {
    expect(verifySignature(alice.device, message, sig)).toBe(true);
  });

  it('refuses another message, another device\'s key, a flipped bit and wrong lengths', () => {
    expect(verifySignature(alice.device, text('fieldmesH'), sig)).toBe(false);
    expect(verifySignature(bob.device, message, sig)).toBe(false);
    expect(verifySignature(alice.device, message, bob.sign(message))).toBe(false);
    for (const bit of [0, 100, 255, 256, 511]) expect(verifySignature(alice.device, message, flipBit(sig, bit))).toBe(false);
    expect(verifySignature(alice.device, message, sig.subarray(0, 63))).toBe(false);
    expect(verifySignature(alice.device, message, new Uint8Array(65))).toBe(false);
  });

  it('throws a typed error for a device id that is not one', () => {
    expectCoreError(() => verifySignature('nope', message, sig), InvalidInputError, 'BAD_DEVICE_ID');
  });

  it('separates purposes with a context prefix', () => {
    expect(withContext(text('ab'), text('cd'))).toEqual(text('abcd'));
    const opSig = alice.sign(withContext(text('fieldmesh/op/1\n'), message));
    expect(verifySignature(alice.device, withContext(text('fieldmesh/op/1\n'), message), opSig)).toBe(true);
    expect(verifySignature(alice.device, withContext(text('fieldmesh/cert/1\n'), message), opSig)).toBe(false);
  });
});

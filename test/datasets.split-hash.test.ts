import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { splitFraction } from '../common/datasets/split-hash.js';
import { DEFAULT_SPLIT_SHARES, SPLITS, splitOf, splitterOf } from '../common/datasets/snapshot-layout.js';

/** The definition: the first 8 bytes of sha256 as a big-endian integer, shifted to 53 bits, over 2^53. */
const reference = (id: string): number => Number(createHash('sha256').update(`driftline-split/1:${id}`).digest().readBigUInt64BE(0) >> 11n) / 2 ** 53;

const referenceSplit = (id: string, shares = DEFAULT_SPLIT_SHARES): string => {
  const fraction = reference(id);
  let upper = 0;
  for (const split of SPLITS) {
    upper += shares[split];
    if (fraction < upper) return split;
  }
  return SPLITS[SPLITS.length - 1]!;
};

describe('dataset splits - the split hash', () => {
  it('is the fraction node:crypto gives, for ids of every length across the padding boundaries', () => {
    for (let length = 0; length <= 300; length++) {
      const id = Array.from({ length }, (_, i) => String.fromCharCode(33 + ((i * 7 + length) % 94))).join('');
      expect(splitFraction(id)).toBe(reference(id));
    }
  });

  it('is the fraction node:crypto gives for sample ids, row ids and non-ASCII ids, lone surrogates included', () => {
    const ids = ['edge-1/1/1', 'edge-12/3/4567#2', 'gerät-ä/1/9', '设备/2/10', 'cam-😀/1/1', 'bad-\ud800/1/1', 'x'.repeat(5000) + 'é'];
    for (let i = 0; i < 2000; i++) ids.push(`edge-${i % 37}/${1 + (i % 3)}/${i * 7919}`);
    for (const id of ids) expect(splitFraction(id)).toBe(reference(id));
    expect(splitFraction('edge-1/1/1')).toBe(reference('edge-1/1/1'));
  });

  it('puts every id in the split the sums of the shares say, whatever the shares', () => {
    const shares = { train: 0.7, validation: 0.2, test: 0.1 };
    const split = splitterOf(shares);
    for (let i = 0; i < 2000; i++) {
      const id = `dev-${i}/1/${i}`;
      expect(SPLITS[split(id)]).toBe(referenceSplit(id, shares));
      expect(splitOf(id)).toBe(referenceSplit(id));
    }
  });
});

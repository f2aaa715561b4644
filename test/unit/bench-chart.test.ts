// Host tests of the benchmark's SVG chart (bench/chart.ts): well-formed, escaped, one bar per row, the target guides.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ratioChart } from '../../bench/chart';

test('ratioChart draws one bar per row, escaped labels, groups and the 0.8x and 1.0x guides', () => {
  const svg = ratioChart('a <title> & more', [
    { group: 'v2, 64 MiB', label: 'save | load (pipe)', ratio: 0.5, low: 0.4, high: 0.6 },
    { group: 'v2, 64 MiB', label: 'migrate A B', ratio: 1.4 },
    { group: 'v1, 256 MiB', label: 'save to a file', ratio: 0.9 },
  ]);
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.match(svg, /<\/svg>$/);
  assert.ok(svg.includes('a &lt;title&gt; &amp; more'));
  assert.equal((svg.match(/<rect x="300"/g) ?? []).length, 3, 'one bar per row');
  // below the target in the second colour, at or above it in the first
  assert.equal((svg.match(/fill="#c0392b"/g) ?? []).length, 1);
  assert.equal((svg.match(/fill="#2f7d32"/g) ?? []).length, 2);
  assert.ok(svg.includes('>0.8x<') && svg.includes('>1.0x<'));
  assert.ok(svg.includes('>v2, 64 MiB<') && svg.includes('>v1, 256 MiB<'));
  assert.equal((svg.match(/<line /g) ?? []).length, 3, 'two guides and one whisker');
});

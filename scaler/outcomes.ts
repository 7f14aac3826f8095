/**
 * What became of one scaled-image request, by one name: the scaler's result carries it, the
 * scaler log line writes it as `outcome`, and the metrics count it under Workhorse's status.
 *
 * - `scaled`: a sharp job scaled the original for this request.
 * - `coalesced`: shared the result of a concurrent identical request's job.
 * - `cache-hit`: a scaled image from the cache (no sharp job).
 * - `shared-hit`: a scaled image from the shared tier (Redis), stored there by any node, or
 *   scaled by another node while this request waited for it.
 * - `not-modified`: a 304, before any byte of the original was read.
 * - `served-original`: the original as it is (too large, not PNG/JPEG, busy…): Workhorse's soft failure.
 * - `failed`: an invalid instruction or an unreadable original (an error answer).
 */
export const SCALE_OUTCOMES = ['scaled', 'coalesced', 'cache-hit', 'shared-hit', 'not-modified', 'served-original', 'failed'] as const;
export type ScaleOutcomeName = (typeof SCALE_OUTCOMES)[number];

/**
 * The `image_resize_requests_total{status}` value of each outcome: Workhorse's statuses, and
 * `cache-hit` of Outrider's own. Every status is exported from the start at 0, in this order.
 */
export const IMAGE_RESIZE_STATUS = {
  scaled: 'success',
  coalesced: 'success',
  'not-modified': 'success-client-cache',
  'served-original': 'served-original',
  failed: 'request-failed',
  'cache-hit': 'cache-hit',
  'shared-hit': 'cache-hit',
} as const satisfies Record<ScaleOutcomeName, string>;
export type ImageResizeStatus = (typeof IMAGE_RESIZE_STATUS)[ScaleOutcomeName];

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const two = (n: number): string => (n < 10 ? `0${n}` : String(n));

/**
 * The HTTP Date header (IMF-fixdate, RFC 9110 section 5.6.7) for a time in milliseconds,
 * from the UTC fields alone. Node's own header uses Date.prototype.toUTCString, which sets up
 * V8's date cache with ICU's time zone data: about 10 MB of resident pages the agent does not
 * otherwise need (bench:agent-footprint). One string per second is kept.
 */
export function httpDate(ms: number): string {
  const second = Math.floor(ms / 1000);
  if (second === cached.second) return cached.text;
  const d = new Date(second * 1000);
  const text = `${DAYS[d.getUTCDay()]}, ${two(d.getUTCDate())} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())} GMT`;
  cached.second = second;
  cached.text = text;
  return text;
}
const cached = { second: Number.NaN, text: '' };

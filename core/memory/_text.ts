/**
 * @module
 * Words for full-text queries and summaries: lower-case letters and digits
 * after Unicode NFKC normalisation, without the commonest English words.
 * Private to `core/memory`.
 */

/** Words too common to say anything about a text. */
export const STOPWORDS: ReadonlySet<string> = new Set(
  ("a an and are as at be been but by can could did do does for from had has have he her his how i if in into is it " +
    "its me my no not of on or our she so than that the their them then there these they this to too us was we were " +
    "what when where which who why will with would you your")
    .split(" "),
);

/** The words of a text, in order, lower-cased and NFKC-normalised. */
export const words = (text: string): string[] => text.normalize("NFKC").toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];

/** The distinct content words of a text (stopwords dropped), first occurrence first. */
export const contentWords = (text: string): string[] => [...new Set(words(text).filter((w) => !STOPWORDS.has(w)))];

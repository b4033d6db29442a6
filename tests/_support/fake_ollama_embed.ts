/**
 * @module
 * A loopback stand-in for Ollama's embedding API, speaking its wire format
 * closely enough for the real `ollama` client: `POST /api/embed` with
 * `{model, input: string | string[], dimensions?, truncate?}` answers
 * `{model, embeddings, total_duration, load_duration, prompt_eval_count}`;
 * an unknown model is a 404 `{error}` as Ollama says it. Its vectors are
 * deterministic and dense (every word spreads over all dimensions), unlike
 * Keel's offline embedder. `nativeDim` is the model's size (768, like
 * `nomic-embed-text`); when `honoursDimensions` is set, `dimensions` keeps
 * the first N (Matryoshka truncation, renormalised), otherwise it is ignored,
 * as older Ollama versions do. Tests read every request it saw.
 */

/** A running fake. */
export interface FakeOllamaEmbed {
  /** Host URL for the client's `host`. */
  readonly url: string;
  readonly requests: Array<{ path: string; body: any }>;
  /** Models it serves (others are 404 "not found, try pulling it first"). */
  models: string[];
  nativeDim: number;
  honoursDimensions: boolean;
  /** Answer the next requests with this HTTP status instead. */
  failWith?: number;
  close(): Promise<void>;
}

const fnv1a = (text: string): number => {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
};

/** The fake model's vector for a text: a sum of one dense pseudo-random vector per word. */
export const fakeVector = (text: string, dim: number): number[] => {
  const v = new Array<number>(dim).fill(0);
  for (const word of text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? []) {
    const seed = fnv1a(word);
    for (let j = 0; j < dim; j++) v[j] += Math.sin(seed * 0.0001 + j * 1.618 + (seed % 97));
  }
  const norm = Math.hypot(...v) || 1;
  return v.map((x) => x / norm);
};

/** Start the fake on 127.0.0.1 with an OS-chosen port. */
export const startFakeOllamaEmbed = (
  options: { models?: string[]; nativeDim?: number; honoursDimensions?: boolean } = {},
): Promise<FakeOllamaEmbed> => {
  const fake: FakeOllamaEmbed = {
    url: "",
    requests: [],
    models: options.models ?? ["nomic-embed-text"],
    nativeDim: options.nativeDim ?? 768,
    honoursDimensions: options.honoursDimensions ?? true,
    close: () => server.shutdown(),
  };
  const ready = Promise.withResolvers<FakeOllamaEmbed>();
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: ({ port }) => {
      (fake as { url: string }).url = `http://127.0.0.1:${port}`;
      ready.resolve(fake);
    },
  }, async (req) => {
    const url = new URL(req.url);
    const body = await req.json().catch(() => null);
    fake.requests.push({ path: url.pathname, body });
    if (req.method !== "POST" || url.pathname !== "/api/embed") {
      return Response.json({ error: `no route ${url.pathname}` }, { status: 404 });
    }
    if (fake.failWith) return Response.json({ error: "scripted failure" }, { status: fake.failWith });
    if (!body || typeof body.model !== "string") return Response.json({ error: "model is required" }, { status: 400 });
    const model = body.model.replace(/:latest$/, "");
    if (!fake.models.includes(model)) {
      return Response.json({ error: `model "${body.model}" not found, try pulling it first` }, { status: 404 });
    }
    const input: string[] = typeof body.input === "string" ? [body.input] : body.input;
    if (!Array.isArray(input) || input.some((t) => typeof t !== "string")) {
      return Response.json({ error: "input must be a string or a list of strings" }, { status: 400 });
    }
    const dim = fake.honoursDimensions && Number.isInteger(body.dimensions) && body.dimensions < fake.nativeDim
      ? body.dimensions
      : fake.nativeDim;
    const embeddings = input.map((t) => {
      const full = fakeVector(t, fake.nativeDim).slice(0, dim);
      const norm = Math.hypot(...full) || 1;
      return full.map((x) => x / norm);
    });
    return Response.json({
      model: body.model,
      embeddings,
      total_duration: 1000,
      load_duration: 10,
      prompt_eval_count: input.reduce((n, t) => n + Math.ceil(t.length / 4), 0),
    });
  });
  return ready.promise;
};

/**
 * @module
 * Model router benchmarks: what Keel adds around a model call. The offline
 * provider with the cache off (routing, rendering, validation), a cache hit
 * (Deno KV file), and full calls through the real `@anthropic-ai/sdk`
 * (streaming and not) and `ollama` clients to loopback fakes, so the figure
 * is client plus router overhead with a provider that answers at once.
 * Prints its own table; `run.ts` calls `benchModels`.
 */
import { startRouter, type TestRouter } from "../models/_router.ts";
import { KEY_ENV } from "../models/_router.ts";
import { startFakeAnthropic } from "../_support/fake_anthropic.ts";
import { startFakeOllama } from "../_support/fake_ollama.ts";
import type { ModelRequest } from "../../core/sdk/mod.ts";

interface Result {
  readonly what: string;
  readonly n: number;
  readonly median: number;
  readonly p99: number;
  readonly perSec: number;
}

const measure = async (what: string, n: number, f: (i: number) => Promise<unknown>): Promise<Result> => {
  for (let i = 0; i < Math.min(20, n); i++) await f(-1 - i); // warm-up
  const samples: number[] = [];
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const s = performance.now();
    await f(i);
    samples.push(performance.now() - s);
  }
  const total = performance.now() - t0;
  samples.sort((a, b) => a - b);
  const at = (p: number) => samples[Math.min(samples.length - 1, Math.floor((p / 100) * samples.length))];
  return { what, n, median: at(50), p99: at(99), perSec: (n / total) * 1000 };
};

const ask = (purpose: string, text: string): ModelRequest => ({
  purpose,
  messages: [{ role: "user", content: text }],
  maxTokens: 100,
});

const TEXT = "The March invoice was sent twice. The client asked us to cancel the duplicate. Please confirm by Friday.";

/** Run the model benchmarks and print their table; `quick` runs a tenth of the calls. */
export const benchModels = async (options: { quick?: boolean } = {}): Promise<Result[]> => {
  const scale = (n: number) => (options.quick ? Math.max(10, Math.ceil(n / 10)) : n);
  const claude = await startFakeAnthropic();
  const ollama = await startFakeOllama();
  const routers: TestRouter[] = [];
  const results: Result[] = [];
  try {
    const providers = {
      claude: { type: "anthropic", baseURL: claude.url, apiKeyEnv: KEY_ENV },
      claude_plain: { type: "anthropic", baseURL: claude.url, apiKeyEnv: KEY_ENV, stream: false },
      local: { type: "ollama", host: ollama.url },
    };
    const routes = [
      { purpose: "stream", use: [{ provider: "claude", model: "claude-haiku-4-5" }] },
      { purpose: "plain", use: [{ provider: "claude_plain", model: "claude-haiku-4-5" }] },
      { purpose: "local", use: [{ provider: "local", model: "llama3.2:3b" }] },
    ];
    const uncached = await startRouter({ providers, routes, cache: { enabled: false } });
    routers.push(uncached);
    const cached = await startRouter(undefined);
    routers.push(cached);

    results.push(
      await measure(
        "offline provider, cache off",
        scale(2000),
        (i) => uncached.generate(ask("summarize", `${i} ${TEXT}`)),
      ),
    );
    await cached.generate(ask("summarize", TEXT));
    results.push(await measure("cache hit (Deno KV file)", scale(2000), () => cached.generate(ask("summarize", TEXT))));
    results.push(
      await measure(
        "Anthropic SDK → loopback fake, SSE streaming",
        scale(300),
        (i) => uncached.generate(ask("stream", `${i} ${TEXT}`)),
      ),
    );
    results.push(
      await measure(
        "Anthropic SDK → loopback fake, one JSON answer",
        scale(300),
        (i) => uncached.generate(ask("plain", `${i} ${TEXT}`)),
      ),
    );
    results.push(
      await measure(
        "ollama client → loopback fake, NDJSON streaming",
        scale(300),
        (i) => uncached.generate(ask("local", `${i} ${TEXT}`)),
      ),
    );
  } finally {
    for (const r of routers) await r.close();
    await claude.close();
    await ollama.close();
  }
  console.log("");
  console.log("## Model router (one call at a time; the fakes answer at once, so this is Keel plus client overhead)");
  console.log("");
  console.log("| measurement | n | median ms | p99 ms | throughput |");
  console.log("| --- | ---: | ---: | ---: | ---: |");
  for (const r of results) {
    console.log(
      `| ${r.what} | ${r.n} | ${r.median.toFixed(3)} | ${r.p99.toFixed(3)} | ${
        Math.round(r.perSec).toLocaleString("en-US")
      } calls/s |`,
    );
  }
  return results;
};

if (import.meta.main) await benchModels({ quick: Deno.args.includes("--quick") });

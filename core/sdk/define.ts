/**
 * @module
 * Typed plugin definitions. `defineConnector<Effects>()` and
 * `defineAgent<Workflows, Uses>()` are `definePlugin` with the types a plugin
 * author writes once, next to `plugin.json`: each effect's or workflow's
 * input and output. Then a missing or misspelt handler, a wrong argument or
 * a wrong return value does not type-check, and a workflow's `ctx.effect`
 * accepts only the effects the agent declared it uses, with their argument
 * types, so an effect the manifest does not list cannot even be written.
 *
 * ```ts
 * type Effects = { "echo.say": { input: { text: string }; output: { said: string } } };
 * defineConnector<Effects>({ effects: { "echo.say": ({ text }) => ({ said: text }) } });
 * ```
 */
import { definePlugin, type EffectContext, type PluginDefinition, type WorkflowContext } from "./mod.ts";

/** The input and output types of one effect or workflow. */
export interface Io<Input = unknown, Output = unknown> {
  readonly input: Input;
  readonly output: Output;
}

/** A map from effect or workflow names to their `Io`; `type` aliases and interfaces both fit. */
export type IoMap<M> = { readonly [K in keyof M]: Io };

/** Any effect with any argument: what an untyped `WorkflowContext` allows. */
export type AnyEffects = Record<string, Io>;

/**
 * `ctx.effect` for the effects in `Uses`: with the default `AnyEffects`, any
 * name and a result type the caller picks; with a declared map, only those
 * names, each with its own argument and result types.
 */
export type EffectCaller<Uses> = string extends keyof Uses ? <T = unknown>(name: string, args: unknown) => Promise<T>
  : <K extends keyof Uses & string>(
    name: K,
    args: Uses[K] extends Io ? Uses[K]["input"] : never,
  ) => Promise<Uses[K] extends Io ? Uses[K]["output"] : never>;

/**
 * What a plugin's health handler may answer: `true` (healthy), `false`, or
 * `{ok: false, message}` to say why; an error thrown also fails the check.
 */
export type HealthAnswer = boolean | { readonly ok: boolean; readonly message?: string };

/** What a health handler learns: the plugin's config, typed by `Config`, and its data dir. */
export interface HealthContext<Config = Readonly<Record<string, unknown>>> {
  readonly config: Config;
  /** The plugin's own folder (see `EffectContext.dataDir`). */
  readonly dataDir: string;
}

/** A plugin's answer to the host's periodic health question. */
export type HealthCheck<Config = Readonly<Record<string, unknown>>> = (
  ctx: HealthContext<Config>,
) => HealthAnswer | Promise<HealthAnswer>;

/** A connector's handlers, one for every effect in `Effects`, typed by it. */
export interface ConnectorDefinition<Effects extends IoMap<Effects>, Config = Readonly<Record<string, unknown>>> {
  readonly effects: {
    readonly [K in keyof Effects]: (
      args: Effects[K]["input"],
      ctx: EffectContext<Config>,
    ) => Effects[K]["output"] | Promise<Effects[K]["output"]>;
  };
  readonly health?: HealthCheck<Config>;
}

/** An agent's workflows, one for every entry in `Workflows`, each given a context limited to `Uses`. */
export interface AgentDefinition<Workflows extends IoMap<Workflows>, Uses extends IoMap<Uses>> {
  readonly workflows: {
    readonly [K in keyof Workflows]: (
      ctx: WorkflowContext<Uses>,
      input: Workflows[K]["input"],
    ) => Promise<Workflows[K]["output"]>;
  };
  readonly health?: HealthCheck;
}

/**
 * Define a connector with typed effect handlers and serve the host's
 * requests. `Effects` mirrors the manifest's `effects`; `Config` types
 * `ctx.config` (the manifest's `config` schema). Call it once, at the top
 * level of `mod.ts`.
 */
export function defineConnector<
  Effects extends IoMap<Effects>,
  Config = Readonly<Record<string, unknown>>,
>(definition: ConnectorDefinition<Effects, Config>): void {
  definePlugin(definition as unknown as PluginDefinition);
}

/**
 * Define an agent with typed workflows and serve the host's requests.
 * `Workflows` mirrors the manifest's `workflows`; `Uses` its `uses`, with
 * the input and output of each effect: `ctx.effect` accepts nothing else.
 * Without `Uses`, the workflows may call no effect at all.
 */
export function defineAgent<
  Workflows extends IoMap<Workflows>,
  Uses extends IoMap<Uses> = Record<never, never>,
>(definition: AgentDefinition<Workflows, Uses>): void {
  definePlugin(definition as unknown as PluginDefinition);
}

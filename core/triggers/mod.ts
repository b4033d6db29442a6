/**
 * @module
 * Triggers that start runs besides a direct API call: cron schedules declared
 * on workflows, and inbound webhooks with a per-hook secret.
 */
export * from "./Scheduler.ts";
export * from "./Hooks.ts";

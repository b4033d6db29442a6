/**
 * @module
 * The dispatcher's run queue (`makeRunQueue`) against a model that filters and sorts everything on every question,
 * as the queue once did: random adds (re-adds too), removals and clocks, and the same answers from both. The queue
 * keeps each priority's runs in order of their ready time, so a dispatcher pass sorts nothing.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { makeRunQueue } from "../../core/orchestrator/mod.ts";

type Op = { add: { id: string; priority: number; queuedAt: number } } | { remove: string } | { at: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    add: fc.record({
      id: fc.constantFrom(...Array.from({ length: 12 }, (_, i) => `run_${i}`)),
      priority: fc.integer({ min: 0, max: 9 }),
      queuedAt: fc.integer({ min: 0, max: 50 }),
    }),
  }),
  fc.record({ remove: fc.constantFrom(...Array.from({ length: 12 }, (_, i) => `run_${i}`)) }),
  fc.record({ at: fc.integer({ min: -1, max: 60 }) }),
);

Deno.test("the run queue answers as filtering and sorting everything would, for any adds, removals and times", () => {
  fc.assert(
    fc.property(fc.array(op, { maxLength: 80 }), (ops) => {
      const queue = makeRunQueue();
      // The model: arrival order is kept (a re-add arrives anew), and a stable sort decides.
      let model: Array<{ id: string; priority: number; readyAt: number }> = [];
      for (const o of ops) {
        if ("add" in o) {
          const { id, priority, queuedAt } = o.add;
          queue.add({ id, workflow: "w", plugin: "p", priority, queuedAt });
          model = [...model.filter((m) => m.id !== id), { id, priority, readyAt: queuedAt }];
        } else if ("remove" in o) {
          queue.remove(o.remove);
          model = model.filter((m) => m.id !== o.remove);
        } else {
          const now = o.at;
          const ready = model.filter((m) => m.readyAt <= now)
            .sort((a, b) => b.priority - a.priority || a.readyAt - b.readyAt);
          assert.deepEqual(queue.ready(now).map((i) => i.run.id), ready.map((m) => m.id));
          assert.equal(queue.hasReady(now), ready.length > 0);
          const later = model.filter((m) => m.readyAt > now).map((m) => m.readyAt);
          assert.equal(queue.nextTime(now), later.length ? Math.min(...later) : Infinity);
        }
        assert.equal(queue.size(), model.length);
      }
    }),
    { numRuns: 500 },
  );
});

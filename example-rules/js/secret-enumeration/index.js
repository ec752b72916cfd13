// Component glue: implements the `rule-module` world with the logic in
// rules.js. Only this file imports the WIT interfaces, which exist only
// inside the component, so the logic stays testable with `node --test`.

import { log } from 'peregrine:rules/log@0.1.0';
import { distinctAdd, firstSeen } from 'peregrine:rules/state@0.1.0';

import { ConfigError, createModule } from './rules.js';

// Module scope lives as long as the instance: the host configures a fresh
// instance for each batch, then evaluates the batch's events on it.
const rules = createModule({ distinctAdd, firstSeen, log });

export function metadata() {
  return rules.metadata();
}

export function configure(config) {
  try {
    rules.configure(config);
  } catch (e) {
    // A thrown string becomes the `err` of `result<_, string>`; anything
    // else would trap instead of telling the operator what to fix.
    throw e instanceof ConfigError ? e.message : `configuration rejected: ${e}`;
  }
}

export function evaluate(event) {
  return rules.evaluate(event);
}

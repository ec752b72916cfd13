// Drives Peregrine's web UI in headless Chromium and checks what a user sees.
// usage: node check.mjs BASE_URL [TOKEN]
// The server must hold the alerts tests/tests/ui.rs posted. Exits non-zero
// with a message on the first failed check.
import { chromium } from "playwright-core";

const [base, token] = process.argv.slice(2);
if (!base) {
  console.error("usage: node check.mjs BASE_URL [TOKEN]");
  process.exit(2);
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + "/");

  if (token) {
    // A protected server asks for a token first.
    await page.locator("#login").waitFor({ state: "visible" });
    await page.fill("#token", token);
    await page.click("#login button");
  }

  // The alert table fills from the API.
  await page.locator("#alerts tr.alert").first().waitFor();
  const rules = await page.locator("#alerts td.rule").allTextContents();
  check(rules.includes("Create Privileged Pod"), `alert table lacks Create Privileged Pod: ${rules}`);
  check(rules.includes("Attach/Exec Pod"), `alert table lacks Attach/Exec Pod: ${rules}`);

  // Summary cards count by priority.
  const total = await page.locator('.card[data-priority="total"] b').textContent();
  check(Number(total) === rules.length, `summary says ${total} alerts, table shows ${rules.length}`);
  check(await page.locator('.card[data-priority="Warning"]').count() === 1, "no Warning card");

  // Filtering by minimum priority hides the Notice alert.
  await page.selectOption("#f-priority", "Warning");
  await page.waitForFunction(() =>
    [...document.querySelectorAll("#alerts td.rule")].every((td) => td.textContent !== "Attach/Exec Pod"));
  const warnings = await page.locator("#alerts .prio").allTextContents();
  check(warnings.length > 0 && warnings.every((p) => ["Warning", "Error", "Critical", "Alert", "Emergency"].includes(p)),
    `min priority filter shows ${warnings}`);

  // A row opens to the full Falco JSON.
  await page.locator("#alerts tr.alert").first().click();
  const detail = JSON.parse(await page.locator("pre.detail").first().textContent());
  check(detail.source === "k8s_audit" && detail.output_fields, `detail is not a Falco alert: ${JSON.stringify(detail)}`);

  // Text search.
  await page.selectOption("#f-priority", "");
  await page.fill("#f-q", "privileged container");
  await page.waitForFunction(() => {
    const cells = [...document.querySelectorAll("#alerts td.rule")];
    return cells.length > 0 && cells.every((td) => td.textContent === "Create Privileged Pod");
  });

  // Every alert names its cluster; the cluster filter narrows the table.
  await page.fill("#f-q", "");
  await page.waitForFunction(() => document.querySelectorAll("#alerts tr.alert").length === 3);
  const clusters = await page.locator("#alerts td.cluster").allTextContents();
  check(clusters.length === 3 && clusters.every((c) => c === "default"), `cluster column: ${clusters}`);
  await page.fill("#f-cluster", "no-such-cluster");
  await page.locator("#alerts-empty").waitFor({ state: "visible" });
  await page.fill("#f-cluster", "default");
  await page.waitForFunction(() => document.querySelectorAll("#alerts tr.alert").length === 3);

  // The rules tab lists the modules with their status.
  await page.click("#tab-rules");
  await page.locator('#modules tr[data-module="falco_k8s_audit"]').waitFor();
  const status = await page.locator('#modules tr[data-module="falco_k8s_audit"] td').nth(2).textContent();
  check(status.startsWith("live"), `falco_k8s_audit status: ${status}`);
  const enabled = await page.locator('#modules tr[data-module="falco_k8s_audit"] td').nth(3).textContent();
  check(enabled === "43/48 enabled", `falco_k8s_audit rules: ${enabled}`);

  check(errors.length === 0, `page errors: ${errors}`);
  await page.screenshot({ path: process.env.SCREENSHOT || "/dev/null" }).catch(() => {});
  console.log("ui checks passed");
} finally {
  await browser.close();
}

import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type BrowserContext } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentRuntime } from "../../src/index.js";
import { createServer } from "../../src/server/index.js";
import { FakeEngine, NatsCluster } from "../../src/testing/index.js";
import { json, serveFake, serveReal, type Served } from "./helpers.js";

const CHROMIUM = "/usr/bin/chromium";
const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) {
  console.warn(
    `\n!!! ${CHROMIUM} is missing: SKIPPING the dashboard browser test. Install it with ` +
      "`apt-get update && apt-get install -y chromium` (CI must have it).\n",
  );
}

/**
 * The dashboard in a real headless browser (Debian's chromium driven by playwright-core, no browser
 * download) against a server on the real model. Writes a screenshot (path printed) to look at.
 */
describe.skipIf(!hasChromium)("dashboard in headless chromium", () => {
  let served: Served;
  let browser: BrowserContext;
  let profile: string;
  let shots: string;

  beforeAll(async () => {
    served = await serveReal({ runtime: { maxAgents: 2, maxTokens: 24 } });
    await json(`${served.url}/agents`, { json: { id: "tech", role: "technical", systemPrompt: "You are the technical lead." } });
    await json(`${served.url}/agents`, { json: { id: "support/42", role: "support", systemPrompt: "You are a dreamer." } });
    await json(`${served.url}/agents/tech/messages`, { json: { text: "Once upon a time" } });
    // A third agent with maxAgents 2: the least recently used one goes to disk.
    await json(`${served.url}/agents`, { json: { id: "biz", role: "business", systemPrompt: "You are the business analyst." } });
    profile = await mkdtemp(join(tmpdir(), "agentrt-chromium-"));
    shots = await mkdtemp(join(tmpdir(), "agentrt-shots-"));
    // A fresh profile per run (playwright passes it as --user-data-dir).
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 800 },
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await served?.close();
    if (profile) await rm(profile, { recursive: true, force: true });
  });

  it("shows agents resident and on disk, live events, and messages an agent", async () => {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (error) => errors.push(error.message));
    page.on("console", (message) => {
      if (message.type() === "error") errors.push(message.text());
    });
    await page.goto(served.url);
    await page.waitForSelector("#agents tr >> text=support/42");
    await page.waitForSelector("#live.on");

    const rows = page.locator("#agents tr");
    expect(await rows.count()).toBe(3);
    const states: Record<string, string> = {};
    for (const row of await rows.all()) {
      const id = (await row.locator("td.id").innerText()).split("\n")[0]!.trim();
      states[id] = await row.locator(".chip").innerText();
    }
    // tech spoke last, so support/42 was the least recently used when biz arrived.
    expect(states).toEqual({ tech: "resident", "support/42": "passivated", biz: "resident" });
    expect(await page.textContent("#totals-text")).toMatch(/2 resident, 1 on disk/);

    // Message the passivated agent from the page: the reply streams in, and the events list shows it coming back.
    await page.selectOption("#message-agent", "support/42");
    await page.fill("#message-text", "Tell me a dream.");
    await page.click("#send");
    await page.waitForSelector("#reply .meta");
    const reply = await page.textContent("#reply");
    expect(reply).toMatch(/tokens · TTFT/);
    // The conversation panel shows the agent's history, newest last, with the turn just sent.
    await page.waitForSelector("#history li.user >> text=Tell me a dream.");
    expect(await page.locator("#history li.assistant").count()).toBeGreaterThan(0);
    expect(await page.textContent("#history-count")).toMatch(/\d+ messages/);
    await page.waitForSelector("#events li >> text=agent:rehydrated");
    await page.waitForSelector("#events li >> text=agent:turn-end");
    await page.locator("#agents tr", { hasText: "support/42" }).locator(".chip", { hasText: "resident" }).waitFor();

    const path = join(shots, "dashboard.png");
    await page.screenshot({ path, fullPage: true });
    console.log(`dashboard screenshot: ${path}`);
    expect(errors, "no errors in the page").toEqual([]);
  });

  it("asks for the bearer token when auth is on, then works with it", async () => {
    const secured = await serveFake({ server: { token: "s3cret" } });
    try {
      await json(`${secured.url}/agents`, { json: { id: "a", systemPrompt: "s" }, headers: { authorization: "Bearer s3cret" } });
      const page = await browser.newPage();
      await page.goto(secured.url);
      await page.locator("#token-form").waitFor({ state: "visible" });
      expect(await page.locator("#agents tr").count()).toBe(0);
      await page.fill("#token", "s3cret");
      await page.click("#token-form button");
      await page.locator("#agents tr", { hasText: "a" }).waitFor();
      await page.locator("#live.on").waitFor();
      expect(await page.locator("#token-form").isVisible()).toBe(false);
      await page.close();
    } finally {
      await secured.close();
    }
  });

  it("shows the cluster's nodes on a cluster node, and no cluster panel elsewhere", async () => {
    const page = await browser.newPage();
    await page.goto(served.url);
    await page.waitForSelector("#agents tr >> text=support/42");
    expect(await page.locator("#cluster-panel").isVisible()).toBe(false);
    await page.close();

    await using cluster = await NatsCluster.start();
    const stateDir = await mkdtemp(join(tmpdir(), "agentrt-dash-cluster-"));
    const start = (node: string) =>
      AgentRuntime.create({
        stateDir: join(stateDir, node),
        maxAgents: 3,
        engineFactory: async () => new FakeEngine({ sequences: 3 }),
        cluster: { servers: cluster.urls, node, prefix: "dash" },
      });
    const [a, b] = [await start("alpha"), await start("beta")];
    const app = await createServer(a);
    try {
      await a.spawn({ id: "clustered", systemPrompt: "s" });
      const url = await app.listen({ host: "127.0.0.1", port: 0 });
      const clustered = await browser.newPage();
      const errors: string[] = [];
      clustered.on("pageerror", (error) => errors.push(error.message));
      await clustered.goto(url);
      await clustered.locator("#cluster-panel").waitFor({ state: "visible" });
      await clustered.locator("#cluster-nodes tr", { hasText: "beta" }).waitFor();
      expect(await clustered.locator("#cluster-nodes tr").count()).toBe(2);
      expect(await clustered.textContent("#cluster-self")).toContain("alpha");
      expect(await clustered.locator("#cluster-nodes tr", { hasText: "alpha (this)" }).locator("td").nth(1).innerText()).toMatch(/^\d+ \/ 3$/);
      expect(errors).toEqual([]);
      await clustered.close();
    } finally {
      await app.close();
      await Promise.allSettled([a.close(), b.close()]);
      await rm(stateDir, { recursive: true, force: true });
    }
  }, 60_000);
});

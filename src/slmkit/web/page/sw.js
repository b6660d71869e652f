// Keeps every file of this export in Cache Storage the first time the page fetches it, and answers from there
// afterwards: a second visit starts with no network. The cache's name changes with each export (the exporter
// writes it below), so a new export replaces the old files instead of mixing with them.
const CACHE = "__SLM_CACHE__";
const SHELL = ["./", "index.html", "chat.css", "chat.js", "slm.js", "slm-web.json"];  // fetched before this worker controlled the page

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((name) => name.startsWith("slm-web-") && name !== CACHE)
                                      .map((name) => caches.delete(name))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || !request.url.startsWith(self.registration.scope)) return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    // The page's own options are in its query (?threads=2): the page is the same file whatever they are.
    const kept = await cache.match(request, { ignoreSearch: request.mode === "navigate" });
    if (kept) return kept;
    const response = await fetch(request);
    // Kept while the page reads its copy: a large model streams to both at once.
    if (response.status === 200) event.waitUntil(cache.put(request, response.clone()));
    return response;
  })());
});

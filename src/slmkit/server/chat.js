// The chat pages' shared parts: `slm serve`'s page and a web export's page load it before their own script.

// A message in the conversation log, scrolled into view; the returned element takes the streamed text.
function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  document.getElementById("log").appendChild(div);
  document.getElementById("log").scrollTop = document.getElementById("log").scrollHeight;
  return div;
}

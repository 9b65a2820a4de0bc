// Keeps a running generation job's page current without reloading it. A reload every 2 seconds
// sent a screen reader back to the top of the page and took the keyboard focus with it; here the
// status line (a polite live region) changes in place, and is read out when it does. Once the
// job ends the page reloads once, so the server draws the result as it does for a finished job.
// Without JavaScript the page's <noscript> refresh does the same job, the old way.
"use strict";

(function () {
  const status = document.querySelector(".job-status[data-progress-url]");
  if (status === null) {
    return;
  }
  const url = status.dataset.progressUrl;
  const state = status.querySelector("strong");
  const detail = status.querySelector(".job-detail");
  const message = status.querySelector(".job-message");
  const bar = document.querySelector("progress");
  const problem = document.querySelector(".job-poll-problem");
  const EVERY = 2000;
  // A server that is down or restarting is asked less and less often, not every 2 seconds.
  const LONGEST = 60000;
  let wait = EVERY;

  function show(job) {
    if (job.finished) {
      window.location.reload();
      return;
    }
    // Only what changed: writing the same text again would have the line read out again.
    if (state.textContent !== job.status || message.textContent !== job.message) {
      document.title = document.title.replace(`: ${state.textContent} ·`, `: ${job.status} ·`);
      status.dataset.status = job.status;
      state.textContent = job.status;
      message.textContent = job.message;
      detail.hidden = job.message === job.status;
    }
    bar.value = job.progress;
    bar.textContent = `${Math.round(job.progress * 100)}%`;
    problem.textContent = "";
    wait = EVERY;
    window.setTimeout(poll, wait);
  }

  function failed(reason) {
    wait = Math.min(wait * 2, LONGEST);
    problem.textContent =
      `Could not check the job's progress (${reason}); ` +
      `trying again in ${wait / 1000} seconds.`;
    window.setTimeout(poll, wait);
  }

  function signedOut() {
    // Polling on would only fail again: signing in is the marketer's to do. Reloading the page
    // leads to the sign-in form, which comes back here afterwards.
    problem.textContent = "You are signed out, so this page has stopped following the job. ";
    const link = document.createElement("a");
    link.href = window.location.pathname;
    link.textContent = "Sign in again";
    problem.append(link);
  }

  function gone() {
    // The job is not there (deleted, or the database was restored from before it): asking again
    // every minute forever would only get the same answer, while the page still said "running".
    problem.textContent =
      "This job no longer exists (the server answered 404), so this page has stopped following it.";
  }

  function poll() {
    // "manual": a signed-out request is redirected to the sign-in page, which fetch would
    // otherwise follow and answer with that page's HTML.
    fetch(url, { headers: { Accept: "application/json" }, redirect: "manual", cache: "no-store" })
      .then((response) => {
        if (response.type === "opaqueredirect") {
          signedOut();
          return;
        }
        if (response.status === 404) {
          gone();
          return;
        }
        if (!response.ok) {
          failed(`the server answered ${response.status}`);
          return;
        }
        return response.json().then(show, () => failed("the server's answer was not readable"));
      })
      .catch(() => failed("no answer from the server"));
  }

  window.setTimeout(poll, wait);
})();

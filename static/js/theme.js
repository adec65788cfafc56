// The colour theme: light, dark, or the system's (prefers-color-scheme), chosen per browser.
// Loaded as a classic (blocking) script in <head>, so the stored choice is applied before the
// first paint; an external file because the Content-Security-Policy refuses inline scripts.
// The CSS reads <html data-theme="light|dark">; no attribute means "follow the system".
// Any <select data-theme-picker> (options system/light/dark) becomes the toggle.
(function () {
  "use strict";
  var KEY = "eai-theme";
  var root = document.documentElement;

  function stored() {
    try {
      var value = window.localStorage.getItem(KEY);
      return value === "light" || value === "dark" ? value : "system";
    } catch (error) {
      return "system"; // storage blocked: follow the system
    }
  }

  function apply(choice) {
    if (choice === "light" || choice === "dark") root.setAttribute("data-theme", choice);
    else root.removeAttribute("data-theme");
  }

  function syncPickers() {
    var choice = stored();
    document.querySelectorAll("select[data-theme-picker]").forEach(function (select) {
      select.value = choice;
    });
  }

  function choose(choice) {
    try {
      if (choice === "light" || choice === "dark") window.localStorage.setItem(KEY, choice);
      else window.localStorage.removeItem(KEY);
    } catch (error) {
      // Not persisted; still applied to this page.
    }
    apply(choice);
  }

  apply(stored());

  document.addEventListener("DOMContentLoaded", function () {
    syncPickers();
    document.querySelectorAll("select[data-theme-picker]").forEach(function (select) {
      select.addEventListener("change", function () {
        choose(select.value);
      });
    });
  });

  // Another tab changed the theme.
  window.addEventListener("storage", function (event) {
    if (event.key === KEY) {
      apply(stored());
      syncPickers();
    }
  });
})();

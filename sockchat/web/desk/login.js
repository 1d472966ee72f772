// The desk's login page: the form is sent with fetch, so that a wrong
// password, or a wait after too many, is said here without a reload.
"use strict";

(function () {
  const form = document.getElementById("login");
  const name = document.getElementById("name");
  const password = document.getElementById("password");
  const submit = document.getElementById("submit");
  const error = document.getElementById("error");
  const ended = document.getElementById("ended");

  // Why the last session ended, if the desk page said (it is our own text).
  const why = sessionStorage.getItem("desk-ended");
  if (why) {
    sessionStorage.removeItem("desk-ended");
    ended.textContent = why;
    ended.hidden = false;
  }

  function say(text) {
    error.textContent = text;
    error.hidden = !text;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    say("");
    submit.disabled = true;
    try {
      const response = await fetch("/login", {
        method: "POST",
        credentials: "same-origin",
        body: new URLSearchParams({ name: name.value, password: password.value }),
      });
      let answer = {};
      try {
        answer = await response.json();
      } catch (e) {
        answer = { error: "the server answered " + response.status };
      }
      if (response.ok) {
        location.replace("/");
        return;
      }
      say(answer.error || "the login failed (" + response.status + ")");
      password.select();
    } catch (e) {
      say("the desk cannot be reached: check that its server is running, then log in again");
    } finally {
      submit.disabled = false;
    }
  });
  name.focus();
})();

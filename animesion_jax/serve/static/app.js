// The page: pictures in (drop, paste, pick, examples), names out (POST /api/predict).
"use strict";

const MAX_RETRIES = 5;  // 503 answers are retried after their Retry-After this many times.
let info = null;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;  // Never innerHTML: names are data.
  return node;
}

async function loadInfo() {
  const response = await fetch("/api/info");
  info = await response.json();
  document.getElementById("model").textContent =
      `Model: ${info.model} · ${info.num_classes} characters`;
  const note = document.getElementById("face-note");
  note.textContent = info.face_detection ?
      "Faces are found first and each face is named." : info.face_note;
  note.hidden = false;
  document.getElementById("limits").textContent =
      `JPEG, PNG, WebP, GIF, BMP or TIFF · up to ${info.max_upload_mb.toFixed(0)} MB and ` +
      `${info.max_megapixels.toFixed(0)} megapixels`;
  document.getElementById("attention-toggle").hidden = !info.attention;
  const examples = document.getElementById("examples");
  info.examples.forEach((example, i) => {
    const button = element("button", "example");
    button.type = "button";
    button.title = `Example ${i + 1} (drawn as ${example.name})`;
    const image = element("img");
    image.src = example.url;
    image.alt = `example ${i + 1}`;
    button.append(image);
    button.addEventListener("click", async () => {
      const blob = await (await fetch(example.url)).blob();
      classify(new File([blob], `example-${i + 1}.png`, {type: "image/png"}));
    });
    examples.append(button);
  });
  document.getElementById("examples-section").hidden = info.examples.length === 0;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function post(file) {
  const attention = document.getElementById("attention").checked && info && info.attention;
  for (let attempt = 0; ; attempt++) {
    const form = new FormData();
    form.append("image", file, file.name || "pasted.png");
    const response = await fetch(`/api/predict${attention ? "?attention=1" : ""}`,
                                 {method: "POST", body: form});
    if (response.status === 503 && attempt < MAX_RETRIES) {
      await sleep(1000 * Number(response.headers.get("Retry-After") || 1));
      continue;
    }
    let body;
    try {
      body = await response.json();
    } catch (error) {
      body = {error: `The server answered ${response.status} ${response.statusText}.`};
    }
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }
}

function percent(probability) {
  return `${(100 * probability).toFixed(1)}%`;
}

function drawBoxes(frame, result) {
  result.faces.forEach((face, i) => {
    if (face.whole_image) return;
    const [x, y, w, h] = face.box;
    const box = element("div", `box colour${i % 6}`);
    box.style.left = `${100 * x / result.width}%`;
    box.style.top = `${100 * y / result.height}%`;
    box.style.width = `${100 * w / result.width}%`;
    box.style.height = `${100 * h / result.height}%`;
    box.append(element("span", "number", String(i + 1)));
    frame.append(box);
  });
}

// "NAME · 87.0%", or "unknown (not sure enough to name; nearest: NAME)" when the model does
// not know the face: the server's wording (Answer.describe), with no percentage beside it.
function answerLine(face) {
  if (face.unknown) {
    return element("p", "answer unknown", face.text);
  }
  const name = `${face.character}${face.enrolled ? " (added)" : ""}`;
  return element("p", "answer known", `${name} · ${percent(face.confidence)}`);
}

// "Add this character": the picture and a name go to POST /api/enroll (--allow_enroll only).
function enrollForm(file) {
  const form = element("form", "enroll");
  const input = element("input");
  input.name = "name";
  input.placeholder = "Character name";
  input.required = true;
  const button = element("button", "button", "Add this character");
  button.type = "submit";
  const status = element("span", "enroll-status muted");
  form.append(input, button, status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData();
    data.append("name", input.value);
    data.append("images", file, file.name || "pasted.png");
    status.textContent = "Adding…";
    try {
      const response = await fetch("/api/enroll", {method: "POST", body: data});
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
      status.textContent = `Added ${body.name} (${body.pictures} picture` +
          `${body.pictures > 1 ? "s" : ""}); ${body.enrolled.length} added characters.`;
      status.className = "enroll-status done";
    } catch (error) {
      status.textContent = error.message;
      status.className = "enroll-status error";
    }
  });
  return form;
}

function faceList(result) {
  const list = element("ol", "faces");
  result.faces.forEach((face, i) => {
    const item = element("li", `face colour${i % 6}`);
    item.append(element("h3", "", face.whole_image ? "Whole picture" : `Face ${i + 1}`));
    item.append(answerLine(face));
    const body = element("div", "face-body");
    const names = element("table", face.unknown ? "top5 guesses" : "top5");
    if (face.unknown) {
      // A refused face's top 5 are guesses, not answers: said so, and none shown as the best.
      names.append(element("caption", "muted", `Guesses: ${face.guesses_note}`));
    }
    face.top5.forEach((guess, rank) => {
      const row = element("tr", rank === 0 && !face.unknown ? "best" : "");
      row.append(element("td", "rank", `${rank + 1}.`), element("td", "name", guess.name));
      const bar = element("td", "bar");
      const fill = element("span");
      fill.style.width = percent(guess.probability);
      bar.append(fill);
      row.append(bar, element("td", "probability", percent(guess.probability)));
      names.append(row);
    });
    body.append(names);
    if (face.attention) {
      const map = element("img", "attention");
      map.src = face.attention;
      map.alt = `attention map of ${face.whole_image ? "the picture" : `face ${i + 1}`}`;
      body.append(map);
    }
    item.append(body);
    list.append(item);
  });
  return list;
}

async function classify(file) {
  const card = element("article", "card");
  card.dataset.state = "working";
  const frame = element("div", "frame");
  const preview = element("img", "preview");
  preview.alt = file.name || "pasted picture";
  preview.src = URL.createObjectURL(file);
  preview.addEventListener("error", () => { preview.hidden = true; });
  frame.append(preview);
  const details = element("div", "details");
  details.append(element("h2", "file", file.name || "pasted picture"));
  const status = element("p", "status muted", "Naming…");
  details.append(status);
  card.append(frame, details);
  document.getElementById("results").prepend(card);
  try {
    const result = await post(file);
    drawBoxes(frame, result);
    const found = result.faces[0].whole_image ? "whole picture" :
        `${result.faces.length} face${result.faces.length > 1 ? "s" : ""}`;
    status.textContent = `${found} · ${result.width}×${result.height} · ` +
        `${result.elapsed_ms.toFixed(0)} ms`;
    for (const note of result.notes) details.append(element("p", "note", note));
    details.append(faceList(result));
    if (info && info.enroll) details.append(enrollForm(file));
    card.dataset.state = "done";
  } catch (error) {
    status.textContent = error.message;
    status.className = "status error";
    card.dataset.state = "error";
  }
}

function classifyAll(files) {
  for (const file of files) classify(file);
}

function setUp() {
  const drop = document.getElementById("drop");
  document.getElementById("picker").addEventListener("change", (event) => {
    classifyAll(event.target.files);
    event.target.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classifyAll(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    const files = [...event.clipboardData.items]
        .filter((item) => item.kind === "file").map((item) => item.getAsFile());
    if (files.length) classifyAll(files);
  });
  loadInfo().catch((error) => {
    document.getElementById("model").textContent = `The server did not answer: ${error}`;
  });
}

setUp();

// mnistgen latent explorer: the VAE's decoder f(z) = sigmoid(W2 tanh(W1 z + b1) + b2), run in this page.
// Everything comes from the JSON in <script id="explorer-data">; the page makes no request.
// Public API for tests and curious users: window.mnistgenExplorer (see the end of this file).
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("explorer-data").textContent);

  // base64 of little-endian float32 / uint8 arrays -> typed arrays
  function bytesOf(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }
  function floatsOf(text) {
    const bytes = bytesOf(text);
    const view = new DataView(bytes.buffer);
    const out = new Float32Array(bytes.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
    return out;
  }

  const LATENT = data.latent_dim;           // 2
  const HIDDEN = data.hidden;               // 500
  const PIXELS = data.side * data.side;     // 784
  const w1 = floatsOf(data.w1);             // (HIDDEN, LATENT), row-major like torch's Linear.weight
  const b1 = floatsOf(data.b1);             // (HIDDEN,)
  const w2 = floatsOf(data.w2);             // (PIXELS, HIDDEN)
  const b2 = floatsOf(data.b2);             // (PIXELS,)
  const means = floatsOf(data.means);       // (N, 2): encoder means of the training images
  const labels = bytesOf(data.labels);      // (N,) class index
  const hiddenBuffer = new Float64Array(HIDDEN);

  // The decoder: z (length LATENT) -> probabilities p(x|z) (Float32Array of PIXELS), accumulated in float64.
  function decode(z) {
    if (!z || z.length !== LATENT) throw new Error("decode expects " + LATENT + " numbers");
    for (let j = 0; j < HIDDEN; j++) {
      let sum = b1[j];
      for (let i = 0; i < LATENT; i++) sum += w1[j * LATENT + i] * z[i];
      hiddenBuffer[j] = Math.tanh(sum);
    }
    const out = new Float32Array(PIXELS);
    for (let k = 0; k < PIXELS; k++) {
      let sum = b2[k];
      const row = k * HIDDEN;
      for (let j = 0; j < HIDDEN; j++) sum += w2[row + j] * hiddenBuffer[j];
      out[k] = 1 / (1 + Math.exp(-sum));
    }
    return out;
  }

  // ---------------------------------------------------------------- the latent plane
  const plane = document.getElementById("plane");
  const overlay = document.getElementById("plane-overlay");
  const digit = document.getElementById("digit");
  const sliders = [document.getElementById("z1"), document.getElementById("z2")];
  const sliderValues = [document.getElementById("z1-value"), document.getElementById("z2-value")];
  const readout = document.getElementById("readout");
  const [X0, X1] = data.range[0], [Y0, Y1] = data.range[1];  // z1 across, z2 up; equal spans (a square)
  const SPAN = X1 - X0;
  const SIZE = plane.width;                 // square canvas, in canvas pixels
  const MARGIN = data.margin;               // room for the axes' labels
  const INNER = SIZE - 2 * MARGIN;

  const toCanvas = (z) => [MARGIN + (z[0] - X0) / SPAN * INNER, MARGIN + (Y1 - z[1]) / SPAN * INNER];
  const fromCanvas = (x, y) => [X0 + (x - MARGIN) / INNER * SPAN, Y1 - (y - MARGIN) / INNER * SPAN];
  const clamp = (v, low, high) => Math.min(high, Math.max(low, v));
  // one coordinate as the readout and the sliders' values show it: 3 decimals, never "-0.000"
  const formatZ = (v) => (Math.abs(v) < 0.0005 ? 0 : v).toFixed(3);

  function drawPlane() {
    const ctx = plane.getContext("2d");
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, SIZE, SIZE);
    ctx.fillStyle = "#333333";
    ctx.font = "12px sans-serif";
    ctx.lineWidth = 1;
    for (let t = Math.ceil(X0); t <= Math.floor(X1); t++) {  // a grid line at every integer
      const [x] = toCanvas([t, 0]);
      ctx.strokeStyle = t === 0 ? "#909090" : "#d0d0d0";
      ctx.beginPath(); ctx.moveTo(x, MARGIN); ctx.lineTo(x, SIZE - MARGIN); ctx.stroke();
      ctx.textAlign = "center"; ctx.fillText(String(t), x, SIZE - MARGIN + 15);
    }
    for (let t = Math.ceil(Y0); t <= Math.floor(Y1); t++) {
      const [, y] = toCanvas([0, t]);
      ctx.strokeStyle = t === 0 ? "#909090" : "#d0d0d0";
      ctx.beginPath(); ctx.moveTo(MARGIN, y); ctx.lineTo(SIZE - MARGIN, y); ctx.stroke();
      ctx.textAlign = "right"; ctx.fillText(String(t), MARGIN - 5, y + 4);
    }
    ctx.textAlign = "center";
    ctx.fillText("z1 (first latent coordinate)", SIZE / 2, SIZE - 6);
    ctx.save(); ctx.translate(13, SIZE / 2); ctx.rotate(-Math.PI / 2);
    ctx.fillText("z2 (second latent coordinate)", 0, 0); ctx.restore();
    ctx.strokeStyle = "#888888";
    ctx.strokeRect(MARGIN, MARGIN, INNER, INNER);
    ctx.globalAlpha = 0.55;
    for (let n = 0; n < labels.length; n++) {
      if (hiddenClasses[labels[n]]) continue;
      const [x, y] = toCanvas([means[2 * n], means[2 * n + 1]]);
      if (x < MARGIN || x > SIZE - MARGIN || y < MARGIN || y > SIZE - MARGIN) continue;
      ctx.fillStyle = data.colors[labels[n]];
      ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
    }
    ctx.globalAlpha = 1;
  }

  function drawMarker(z) {
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, SIZE, SIZE);
    const [x, y] = toCanvas(z);
    ctx.strokeStyle = "#000000"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(x, MARGIN); ctx.lineTo(x, SIZE - MARGIN); ctx.stroke();
    ctx.beginPath(); ctx.moveTo(MARGIN, y); ctx.lineTo(SIZE - MARGIN, y); ctx.stroke();
    ctx.fillStyle = "#ffffff"; ctx.strokeStyle = "#000000"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(x, y, 6, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
  }

  // ---------------------------------------------------------------- the decoded image
  const small = document.createElement("canvas");
  small.width = data.side; small.height = data.side;

  function drawDigit(pixels) {
    drawImageTo(digit.getContext("2d"), pixels, 0, 0, digit.width);
  }

  const state = { z: [0, 0], pixels: decode([0, 0]) };

  // One number per coordinate, everywhere: the sliders hold z (step "any": no snapping to a grid; the browser
  // keeps 15 significant digits, so z is read back from them), the image decodes it, and the readout and the
  // sliders' value texts show it with the same formatting.
  function setZ(z1, z2) {
    const wanted = [clamp(Number(z1), X0, X1), clamp(Number(z2), Y0, Y1)];
    sliders.forEach((slider, axis) => { slider.value = String(wanted[axis]); });
    state.z = sliders.map((slider, axis) => (slider.value === "" ? wanted[axis] : Number(slider.value)));
    state.pixels = decode(state.z);
    drawDigit(state.pixels);
    drawMarker(state.z);
    const shown = state.z.map(formatZ);
    sliderValues.forEach((output, axis) => { output.value = shown[axis]; });
    readout.textContent = "z = (" + shown[0] + ", " + shown[1] + ")";
    return state.pixels;
  }

  // ---------------------------------------------------------------- input: pointer, sliders, keys, legend
  function pointerToZ(event) {
    const box = overlay.getBoundingClientRect();
    const x = (event.clientX - box.left) * (SIZE / box.width);
    const y = (event.clientY - box.top) * (SIZE / box.height);
    return fromCanvas(x, y);
  }
  overlay.addEventListener("pointermove", (event) => { const z = pointerToZ(event); setZ(z[0], z[1]); });
  overlay.addEventListener("pointerdown", (event) => { const z = pointerToZ(event); setZ(z[0], z[1]); });
  [[X0, X1], [Y0, Y1]].forEach(([low, high], axis) => {
    const slider = sliders[axis];
    slider.min = String(low); slider.max = String(high);  // step "any" (in the HTML): the slider holds any z
    slider.addEventListener("input", () => setZ(sliders[0].value, sliders[1].value));
  });
  const STEP = SPAN / 100;
  document.addEventListener("keydown", (event) => {
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] };
    const move = moves[event.key];
    if (!move || event.target instanceof HTMLInputElement) return;  // sliders handle their own keys
    const step = event.shiftKey ? 10 * STEP : STEP;
    setZ(state.z[0] + move[0] * step, state.z[1] + move[1] * step);
    event.preventDefault();
  });

  const hiddenClasses = new Array(data.classes.length).fill(false);
  const legend = document.getElementById("legend");
  data.classes.forEach((name, index) => {
    const item = document.createElement("button");
    item.type = "button";
    item.className = "legend-item";
    item.title = "show or hide this class";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = data.colors[index];
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(name));
    item.addEventListener("click", () => {
      hiddenClasses[index] = !hiddenClasses[index];
      item.classList.toggle("off", hiddenClasses[index]);
      drawPlane();
    });
    legend.appendChild(item);
  });


  // ---------------------------------------------------------------- the GAN panel (optional)
  // SPEC §3's generator: Linear(zdim, 1568) -> LeakyReLU -> reshape 32x7x7 -> nearest 2x -> conv 3x3 (16)
  // -> LeakyReLU -> nearest 2x -> conv 3x3 (8) -> LeakyReLU -> conv 3x3 (1) -> sigmoid; float64 activations.
  function setupGan(g) {
    const ZDIM = g.zdim, SLOPE = g.slope, CH = g.channels, START = g.start;
    const linearW = floatsOf(g.linear_w), linearB = floatsOf(g.linear_b);
    const convW = g.conv_w.map(floatsOf), convB = g.conv_b.map(floatsOf);
    const corners = floatsOf(g.corners);    // (4, ZDIM): top-left, top-right, bottom-left, bottom-right
    const leaky = (v) => (v >= 0 ? v : SLOPE * v);

    function upsample(input, channels, size) {  // (C, size, size) -> (C, 2 size, 2 size), nearest
      const big = 2 * size, out = new Float64Array(channels * big * big);
      for (let c = 0; c < channels; c++)
        for (let y = 0; y < big; y++)
          for (let x = 0; x < big; x++)
            out[(c * big + y) * big + x] = input[(c * size + (y >> 1)) * size + (x >> 1)];
      return out;
    }
    function conv3x3(input, cin, cout, size, weights, bias) {  // zero padding 1, stride 1
      const area = size * size, out = new Float64Array(cout * area);
      for (let o = 0; o < cout; o++) {
        const outBase = o * area;
        for (let i = 0; i < cin; i++) {
          const inBase = i * area;
          for (let ky = 0; ky < 3; ky++) {
            for (let kx = 0; kx < 3; kx++) {
              const w = weights[((o * cin + i) * 3 + ky) * 3 + kx];
              for (let y = Math.max(0, 1 - ky); y < Math.min(size, size + 1 - ky); y++) {
                const row = inBase + (y + ky - 1) * size + kx - 1, outRow = outBase + y * size;
                for (let x = Math.max(0, 1 - kx); x < Math.min(size, size + 1 - kx); x++)
                  out[outRow + x] += w * input[row + x];
              }
            }
          }
        }
        for (let k = 0; k < area; k++) out[outBase + k] += bias[o];
      }
      return out;
    }
    function generate(z) {  // z (length ZDIM) -> Float32Array(784) in (0, 1)
      if (!z || z.length !== ZDIM) throw new Error("generate expects " + ZDIM + " numbers");
      let a = new Float64Array(linearB.length);
      for (let j = 0; j < a.length; j++) {
        let sum = linearB[j];
        for (let i = 0; i < ZDIM; i++) sum += linearW[j * ZDIM + i] * z[i];
        a[j] = leaky(sum);
      }
      let size = START;
      a = upsample(a, CH[0], size); size *= 2;
      a = conv3x3(a, CH[0], CH[1], size, convW[0], convB[0]).map(leaky);
      a = upsample(a, CH[1], size); size *= 2;
      a = conv3x3(a, CH[1], CH[2], size, convW[1], convB[1]).map(leaky);
      a = conv3x3(a, CH[2], CH[3], size, convW[2], convB[2]);
      const out = new Float32Array(a.length);
      for (let k = 0; k < a.length; k++) out[k] = 1 / (1 + Math.exp(-a[k]));
      return out;
    }
    function mix(u, v) {  // bilinear mixture of the four corner noise vectors, u, v in [0, 1]
      const weights = [(1 - u) * (1 - v), u * (1 - v), (1 - u) * v, u * v];
      const z = new Array(ZDIM).fill(0);
      for (let c = 0; c < 4; c++) for (let i = 0; i < ZDIM; i++) z[i] += weights[c] * corners[c * ZDIM + i];
      return z;
    }

    const pad = document.getElementById("gan-pad"), padOverlay = document.getElementById("gan-pad-overlay");
    const ganDigit = document.getElementById("gan-digit"), ganReadout = document.getElementById("gan-readout");
    const PAD = pad.width, TILES = g.tiles;
    const padCtx = pad.getContext("2d");
    padCtx.imageSmoothingEnabled = false;
    padCtx.fillStyle = "#555555";
    padCtx.fillRect(0, 0, PAD, PAD);
    for (let r = 0; r < TILES; r++) {      // the background: G(z) on a TILES x TILES grid of (u, v), 1 px apart
      for (let q = 0; q < TILES; q++) {
        drawImageTo(padCtx, generate(mix(q / (TILES - 1), r / (TILES - 1))),
                    q * PAD / TILES + 1, r * PAD / TILES + 1, PAD / TILES - 2);
      }
    }
    const ganState = { uv: [0.5, 0.5], z: null, pixels: null };
    function setUV(u, v) {
      const clampUnit = (t) => Math.min(1, Math.max(0, Number(t)));
      ganState.uv = [clampUnit(u), clampUnit(v)];
      ganState.z = mix(ganState.uv[0], ganState.uv[1]);
      ganState.pixels = generate(ganState.z);
      drawImageTo(ganDigit.getContext("2d"), ganState.pixels, 0, 0, ganDigit.width);
      const ctx = padOverlay.getContext("2d");
      ctx.clearRect(0, 0, PAD, PAD);
      const [x, y] = uvToCanvas(ganState.uv);
      ctx.fillStyle = "rgba(255,255,255,0.9)"; ctx.strokeStyle = "#d62728"; ctx.lineWidth = 3;
      ctx.beginPath(); ctx.arc(x, y, 7, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      ganReadout.textContent = "u = " + ganState.uv[0].toFixed(3) + ", v = " + ganState.uv[1].toFixed(3);
      return ganState.pixels;
    }
    // tile centres: (u, v) = (0, 0) at the centre of the top-left tile, (1, 1) at the bottom-right one
    const uvToCanvas = (uv) => [(uv[0] * (TILES - 1) + 0.5) * PAD / TILES, (uv[1] * (TILES - 1) + 0.5) * PAD / TILES];
    const canvasToUV = (x, y) => [(x * TILES / PAD - 0.5) / (TILES - 1), (y * TILES / PAD - 0.5) / (TILES - 1)];
    function padPointer(event) {
      const box = padOverlay.getBoundingClientRect();
      const uv = canvasToUV((event.clientX - box.left) * PAD / box.width, (event.clientY - box.top) * PAD / box.height);
      setUV(uv[0], uv[1]);
    }
    padOverlay.addEventListener("pointermove", padPointer);
    padOverlay.addEventListener("pointerdown", padPointer);
    setUV(0.5, 0.5);
    return {
      generate: generate, mix: mix, setUV: setUV, uvToCanvas: uvToCanvas,
      get uv() { return ganState.uv.slice(); }, get z() { return ganState.z.slice(); },
      get pixels() { return ganState.pixels; },
    };
  }

  // a 28x28 image of values in [0, 1] drawn as white-on-black squares at (x, y), size x size canvas pixels
  function drawImageTo(ctx, pixels, x, y, size) {
    const smallCtx = small.getContext("2d");
    const image = smallCtx.createImageData(data.side, data.side);
    for (let k = 0; k < PIXELS; k++) {
      const level = Math.round(255 * pixels[k]);
      image.data[4 * k] = level; image.data[4 * k + 1] = level; image.data[4 * k + 2] = level;
      image.data[4 * k + 3] = 255;
    }
    smallCtx.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;        // nearest neighbour: each pixel a sharp square
    ctx.drawImage(small, x, y, size, size);
  }

  drawPlane();
  setZ(0, 0);  // the prior's mean, or the nearest point of the plane
  const gan = data.gan ? setupGan(data.gan) : null;

  window.mnistgenExplorer = {
    decode: decode,                       // z -> Float32Array(784) of p(x|z), row-major 28x28
    setZ: setZ,                           // move the view to z (clamped to the plane); returns the pixels
    get z() { return state.z.slice(); },  // the z shown now
    get pixels() { return state.pixels; },// the image shown now
    toCanvas: toCanvas,                   // z -> canvas pixel of the plane
    range: { z1: [X0, X1], z2: [Y0, Y1] },  // the plane shown; setZ clamps to it
    points: labels.length,
    gan: gan,                             // null, or {generate(z), mix(u, v), setUV(u, v), uv, z, pixels}
  };
})();

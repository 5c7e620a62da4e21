// Shared by the viewer pages: read the view from the URL, build a white-background three.js renderer and a camera
// in the file's OpenCV frame (up = -y), and report when the picture is final (window.__done).
import * as THREE from "three";

export function setup() {
  const p = new URLSearchParams(location.search);
  const size = Number(p.get("size") || 256);
  const eye = (p.get("eye") || "0,0,-3.75").split(",").map(Number);
  const renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(1);
  renderer.setSize(size, size);
  renderer.setClearColor(0xffffff, 1);
  document.body.appendChild(renderer.domElement);
  const camera = new THREE.PerspectiveCamera(Number(p.get("fov") || 45), 1, 0.05, 100);
  camera.position.set(...eye);
  camera.up.set(0, -1, 0); // the files' up is -y (OpenCV / original 3DGS)
  camera.lookAt(0, 0, 0);
  return { THREE, renderer, camera, url: p.get("ply") };
}

// Render `frames` frames, `gap` ms apart (sorting runs asynchronously), then mark the page done.
export function finish(step, frames = 12, gap = 50) {
  let n = 0;
  const tick = () => {
    step();
    if (++n < frames) setTimeout(() => requestAnimationFrame(tick), gap);
    else window.__done = "ok";
  };
  requestAnimationFrame(tick);
}

export function fail(e) {
  window.__done = "error: " + (e && e.stack ? e.stack : e);
}

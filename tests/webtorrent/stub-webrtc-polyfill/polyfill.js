// The real package's "polyfill" entry installs the classes on globalThis; the
// stub installs nothing, so code that checks for WebRTC finds none.
export {}

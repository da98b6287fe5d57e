// Stand-in for the `webrtc-polyfill` package: the same export names, each a
// class that refuses to be constructed.  WebTorrent imports these at load time
// (through simple-peer) but only uses them for WebRTC peers, which the peernet
// interop test never has (it connects over TCP only).
function unavailable (name) {
  return class {
    constructor () {
      throw new Error(`${name}: WebRTC is not available (stub webrtc-polyfill)`)
    }
  }
}

export const RTCPeerConnection = unavailable('RTCPeerConnection')
export const RTCSessionDescription = unavailable('RTCSessionDescription')
export const RTCIceCandidate = unavailable('RTCIceCandidate')
export const RTCIceTransport = unavailable('RTCIceTransport')
export const RTCDataChannel = unavailable('RTCDataChannel')
export const RTCSctpTransport = unavailable('RTCSctpTransport')
export const RTCDtlsTransport = unavailable('RTCDtlsTransport')
export const RTCCertificate = unavailable('RTCCertificate')
export const MediaStream = unavailable('MediaStream')
export const MediaStreamTrack = unavailable('MediaStreamTrack')
export const MediaStreamTrackEvent = unavailable('MediaStreamTrackEvent')
export const RTCPeerConnectionIceEvent = unavailable('RTCPeerConnectionIceEvent')
export const RTCDataChannelEvent = unavailable('RTCDataChannelEvent')
export const RTCTrackEvent = unavailable('RTCTrackEvent')
export const RTCError = unavailable('RTCError')
export const RTCErrorEvent = unavailable('RTCErrorEvent')
export const RTCRtpTransceiver = unavailable('RTCRtpTransceiver')
export const RTCRtpReceiver = unavailable('RTCRtpReceiver')
export const RTCRtpSender = unavailable('RTCRtpSender')

export const stub = true
export * as default from './index.js'

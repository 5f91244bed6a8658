import Foundation

/// An interruption notice in spotd's own terms, whatever cloud format it came in.
struct Notice: Sendable, Equatable {
    var nodeId: String
    var kind: InterruptionKind
    var deadline: Millis?
    var source: String
    var eventId: String
    /// Other names the node may be registered under (GCP: instance name and numeric id).
    var aliases: [String] = []
}

/// An event a cloud sent that spotd records but does not act on (Azure Freeze, Reboot, Redeploy).
struct IgnoredNotice: Sendable, Equatable {
    var eventId: String
    var eventType: String
    var resources: [String]
}

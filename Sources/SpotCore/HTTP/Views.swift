import Foundation
import Hummingbird

/// JSON shapes of the resources, exactly as `openapi.yaml` describes them.
enum View {
    static func time(_ millis: Millis?) -> JSONValue { millis.map { .string(TimeFormat.rfc3339($0)) } ?? .null }
    static func string(_ text: String?) -> JSONValue { text.map(JSONValue.string) ?? .null }
    static func int(_ number: Int) -> JSONValue { .int(Int64(number)) }

    static func pool(_ pool: Pool, _ stats: PoolStats) -> JSONValue {
        var nodes: [String: JSONValue] = [:]
        for state in NodeState.allCases { nodes[state.rawValue] = int(stats.nodesByState[state] ?? 0) }
        return .object([
            "name": .string(pool.name), "capacity_type": .string(pool.capacityType.rawValue), "gpu_type": .string(pool.gpuType),
            "gpus_per_node": int(pool.gpusPerNode), "zone": .string(pool.zone), "instance_type": .string(pool.instanceType),
            "hourly_price": .double(pool.hourlyPrice), "min_nodes": int(pool.minNodes), "max_nodes": int(pool.maxNodes),
            "stockout": .bool(pool.stockout), "nodes": .object(nodes), "gpus_total": int(stats.gpusTotal),
            "gpus_allocated": int(stats.gpusAllocated), "interruption_rate": .double(stats.interruptionRate),
            "rebalance_signals": int(stats.rebalanceSignals), "created_at": time(pool.createdAt), "updated_at": time(pool.updatedAt),
        ])
    }

    static func node(_ detail: NodeDetail) -> JSONValue {
        let node = detail.node
        return .object([
            "id": .string(node.id), "pool": .string(node.pool), "gpus": int(node.gpus), "gpus_allocated": int(node.gpusAllocated),
            "state": .string(node.state.rawValue), "schedulable": .bool(node.state.schedulable),
            "capacity_type": string(detail.capacityType?.rawValue), "gpu_type": string(detail.gpuType), "zone": string(detail.zone),
            "jobs": .array(detail.jobIds.map(JSONValue.string)), "interruption_id": string(detail.interruptionId),
            "provisioning_request_id": string(node.provisioningRequestId), "created_at": time(node.createdAt),
            "updated_at": time(node.updatedAt), "terminated_at": time(node.terminatedAt),
        ])
    }

    static func checkpoint(_ checkpoint: Checkpoint?) -> JSONValue {
        guard let checkpoint else { return .null }
        return .object(["uri": .string(checkpoint.uri), "step": .int(checkpoint.step), "at": time(checkpoint.at)])
    }

    static func job(_ job: Job, history: [Event]? = nil) -> JSONValue {
        var fields: [String: JSONValue] = [
            "id": .string(job.id), "tier": .string(job.tier.rawValue), "gpus": int(job.gpus), "gpu_type": string(job.gpuType),
            "checkpointable": .bool(job.checkpointable),
            "expected_duration_seconds": job.expectedDurationSeconds.map(JSONValue.int) ?? .null, "priority": .int(job.priority),
            "state": .string(job.state.rawValue), "node_id": string(job.nodeId), "nodes": int(job.nodes),
            "node_ids": .array(job.members.map(JSONValue.string)), "attempt": .int(job.attempt),
            "pending_reason": job.state == .queued
                ? string(job.pendingReason ?? "waiting to be placed (a reason is recorded only for a job no ready node fits)") : .null,
            "requeue_count": .int(job.requeueCount), "last_checkpoint": checkpoint(job.lastCheckpoint),
            "resume_from": checkpoint(job.resumeFrom), "checkpoint_deadline": time(job.checkpointDeadline),
            "submitted_at": time(job.submittedAt), "updated_at": time(job.updatedAt), "started_at": time(job.startedAt),
            "finished_at": time(job.finishedAt),
        ]
        if let history { fields["history"] = .array(history.map(event)) }
        return .object(fields)
    }

    static func service(_ detail: ServiceDetail) -> JSONValue {
        let service = detail.service
        return .object([
            "id": .string(service.id), "tier": .string(service.tier.rawValue), "replicas": int(service.replicas),
            "gpus_per_replica": int(service.gpusPerReplica), "gpu_type": string(service.gpuType),
            "min_available": int(service.minAvailable), "base_on_demand": int(service.baseOnDemand),
            "ready_replicas": int(detail.readyReplicas), "members": .array(detail.members.map(replica)),
            "created_at": time(service.createdAt), "updated_at": time(service.updatedAt),
        ])
    }

    static func replica(_ replica: ServiceReplica) -> JSONValue {
        .object([
            "id": .string(replica.id), "node_id": string(replica.nodeId), "pool": string(replica.pool),
            "capacity_type": string(replica.capacityType?.rawValue), "state": .string(replica.state.rawValue),
            "replaces": string(replica.replaces), "leaving": string(replica.doomedReason), "drain_until": time(replica.drainUntil),
            "created_at": time(replica.createdAt), "ready_at": time(replica.readyAt), "gone_at": time(replica.goneAt),
        ])
    }

    static func interruption(_ detail: InterruptionDetail) -> JSONValue {
        let value = detail.interruption
        return .object([
            "id": .string(value.id), "node_id": .string(value.nodeId), "pool": string(value.pool), "kind": .string(value.kind.rawValue),
            "source": .string(value.source), "event_id": .string(value.eventId), "state": .string(value.state.rawValue),
            "deadline": time(value.deadline), "received_at": time(value.receivedAt), "completed_at": time(value.completedAt),
            "timeline": .array(
                detail.timeline.map { step in
                    var fields: [String: JSONValue] = ["step": .string(step.step), "at": time(step.at)]
                    if let job = step.jobId { fields["job_id"] = .string(job) }
                    if let text = step.detail { fields["detail"] = .string(text) }
                    return .object(fields)
                }),
        ])
    }

    static func provisioning(_ request: ProvisioningRequest) -> JSONValue {
        .object([
            "id": .string(request.id), "pool": .string(request.pool), "reason": .string(request.reason),
            "interruption_id": string(request.interruptionId), "replaces_node_id": string(request.replacesNodeId),
            "state": .string(request.state.rawValue), "node_id": string(request.nodeId), "error": string(request.error),
            "created_at": time(request.createdAt), "resolved_at": time(request.resolvedAt), "attempts": .int(Int64(request.attempts)),
            "next_attempt_at": time(request.nextAttemptAt), "last_error": string(request.lastError),
        ])
    }

    static func policy(_ policy: Policy) -> JSONValue {
        .object([
            "tier": .string(policy.tier.rawValue), "capacity_types": .array(policy.capacityTypes.map { .string($0.rawValue) }),
            "max_uncheckpointable_spot_seconds": .int(policy.maxUncheckpointableSpotSeconds),
            "spot_requires_checkpointable": .bool(policy.spotRequiresCheckpointable), "updated_at": time(policy.updatedAt),
        ])
    }

    static func event(_ event: Event) -> JSONValue {
        .object([
            "id": .int(event.id), "at": time(event.at), "type": .string(event.type), "subject": .string(event.subject),
            "actor": .string(event.actor), "data": event.data,
        ])
    }

    static func token(_ token: Token, secret: String? = nil) -> JSONValue {
        var fields: [String: JSONValue] = [
            "id": .string(token.id), "name": .string(token.name), "role": .string(token.role.rawValue), "created_at": time(token.createdAt),
        ]
        if let secret { fields["token"] = .string(secret) }
        return .object(fields)
    }

    static func page<T>(_ page: Page<T>, _ render: (T) -> JSONValue) -> JSONValue {
        .object(["items": .array(page.items.map(render)), "next_cursor": string(page.nextCursor)])
    }
}

extension JSONValue {
    /// A JSON response.
    func response(_ status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: jsonBytes)))
    }
}

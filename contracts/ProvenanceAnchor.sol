// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title ProvenanceAnchor: the consortium-chain anchor of Provenance Gateway transparency logs.
/// @notice Each gateway publishes the head of its RFC 9162 log as (logId, treeSize, rootHash).
///         The chain is a timestamped, replicated witness of those heads; the records themselves
///         never leave the gateway (logId = SHA-256 of the log's origin line, so not even a site
///         name in an origin reaches the chain).
/// @dev Event-only by design: the head lives in the Anchored event (cheap log data), and the only
///      storage is one uint64 per (submitter, log) so the contract can refuse a tree size that
///      does not grow. Sizes are kept per submitter so no other account can "block" a log by
///      anchoring a huge size under its logId first (griefing); verifiers match the event's
///      submitter against the gateway's known chain address. No owner, no admin key, no upgrade:
///      who may send transactions at all is the consortium chain's permissioning (Besu).
contract ProvenanceAnchor {
    /// @notice A log head was anchored by `submitter`.
    event Anchored(bytes32 indexed logId, uint64 treeSize, bytes32 rootHash, address submitter);

    /// @notice The tree size must grow per (submitter, log): a repeat or a rollback is refused.
    error SizeNotGrowing(bytes32 logId, uint64 lastSize, uint64 treeSize);

    /// @notice The largest tree size anchored for `logId` by `submitter`.
    mapping(address submitter => mapping(bytes32 logId => uint64 size)) public lastSize;

    /// @notice Anchor the head (treeSize, rootHash) of the log `logId`.
    function anchor(bytes32 logId, uint64 treeSize, bytes32 rootHash) external {
        uint64 last = lastSize[msg.sender][logId];
        // A non-growing size is a replay of an anchored head or a rollback of the log
        // (RFC 9162 §2.1.4: a later head of an append-only log has a larger tree).
        if (treeSize <= last) revert SizeNotGrowing(logId, last, treeSize);
        lastSize[msg.sender][logId] = treeSize;
        emit Anchored(logId, treeSize, rootHash, msg.sender);
    }
}

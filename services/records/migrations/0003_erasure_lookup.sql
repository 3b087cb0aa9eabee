-- The records worker asks, for the callers of the appeals in each batch, whether one of them asked
-- for erasure after the appeal was received (an appeal still on its way when the erasure ran).
CREATE INDEX privacy_audit_erasures ON privacy_audit (subject, at) WHERE action = 'erase';

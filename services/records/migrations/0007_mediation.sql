-- 人民调解: how the mediation of a street's People's Mediation Committee ended, from its resolution
-- (the `mediation` of a `resolved` ticket.updated): 'agreed' (调解成功，达成协议) with the
-- agreement's terms, or 'not_agreed' (调解不成; the resolution's note says what the parties were
-- told). A later resolution sets them anew, as the ticket in Redis does; a resolution by any other
-- department leaves none. Rows folded before it have none until they are folded again
-- (`appeals records rebuild`).
ALTER TABLE tickets ADD COLUMN mediation_outcome text;
ALTER TABLE tickets ADD COLUMN mediation_agreement text NOT NULL DEFAULT '';

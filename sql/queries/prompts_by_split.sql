-- A few prompts of one split with their reference and source, in id order
-- params: split=eval, limit=20
select
    p.prompt_id,
    p.origin,
    left(p.prompt, 60) as prompt,
    left(p.reference, 40) as reference,
    d.source_uri
from prompts as p
inner join documents as d using (document_id)
where p.split = $split
order by p.prompt_id
limit $limit;

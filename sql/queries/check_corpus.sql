-- Data checks on the corpus: each row returned is a violation (none expected)
select 'duplicate document_id' as check_name, document_id as id, count(*) as n
from documents
group by document_id
having count(*) > 1

union all

select 'duplicate content_hash', content_hash, count(*)
from documents
group by content_hash
having count(*) > 1

union all

select 'duplicate prompt_id', prompt_id, count(*)
from prompts
group by prompt_id
having count(*) > 1

union all

select 'prompt without document', p.prompt_id, 1
from prompts as p
anti join documents as d using (document_id)

union all

select 'prompt split differs from its document', p.prompt_id, 1
from prompts as p
inner join documents as d using (document_id)
where p.split <> d.split;
